"""The `seqtune` command: `seqtune demo`, `seqtune train ...` (the Trainer script),
`seqtune train-loop ...` (the Accelerate script), `seqtune report`, `seqtune summarize`,
`seqtune translate`, `seqtune --version`."""

from __future__ import annotations

import argparse
import sys

from . import __version__

COMMANDS = {
    "demo": "run the embedded default end to end: tiny model, built-in data, ROUGE before and after "
    "(--task translation: a made-up language pair, BLEU and chrF)",
    "train": "fine-tune with transformers' Seq2SeqTrainer (same flags as run_summarization.py)",
    "train-loop": "fine-tune with the explicit Accelerate loop (same flags as run_summarization_no_trainer.py)",
    "report": "rebuild OUTPUT_DIR/report.html and its plots from a run's saved logs "
    "(also while it runs or after a kill)",
    "summarize": "summarize texts with a trained model: seqtune summarize --model OUTPUT_DIR INPUT...",
    "translate": "translate texts with a trained model: seqtune translate --model OUTPUT_DIR INPUT...",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog="seqtune", description="Fine-tune sequence-to-sequence models.")
        parser.add_argument("--version", action="version", version=f"seqtune {__version__}")
        parser.add_argument(
            "command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v}" for k, v in COMMANDS.items())
        )
        parser.parse_args(argv[:1])
        return
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from .demo import main as run
    elif command == "train":
        from .recipes.trainer import main as run
    elif command == "train-loop":
        from .recipes.accelerate_loop import main as run
    elif command == "report":
        from .report import main as run
    elif command == "summarize":
        from .summarize import main as run
    elif command == "translate":
        from .summarize import translate as run
    run(rest)


if __name__ == "__main__":
    main()
