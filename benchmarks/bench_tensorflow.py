#!/usr/bin/env python
"""The TensorFlow script beside the two PyTorch scripts, in one invocation: training samples/s and
evaluation-with-generation samples/s on the same model, data and hyper-parameters.

Each system runs in its own subprocess: the PyTorch scripts in seqtune's main environment (this
python), the TensorFlow script in .venv-tf (`--tf_python`). Each is repeated; the median is printed
with the ratio against the Trainer script. Evaluation times include compilation (XLA for the TF
script's generate; none for PyTorch's eager generate), as a user's run pays it.

    python benchmarks/bench_tensorflow.py                  # make bench-tf
    python benchmarks/bench_tensorflow.py --size small --steps 40 --repeats 3

Nothing is downloaded: the model is built from a config with random weights, the corpus is synthetic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "src"))

from bench_summarization import build_world  # noqa: E402

SCRIPTS = {
    "pytorch-trainer": os.path.join(REPO, "examples", "pytorch", "summarization", "run_summarization.py"),
    "pytorch-loop": os.path.join(REPO, "examples", "pytorch", "summarization", "run_summarization_no_trainer.py"),
    "tensorflow-keras": os.path.join(REPO, "examples", "tensorflow", "summarization", "run_summarization.py"),
}
FIGURES = ("train_samples_per_second", "eval_samples_per_second", "train_loss", "eval_rouge1")


def flags(system: str, world: dict, output_dir: str, args) -> list[str]:
    files = world["files"]
    common = [
        *("--model_name_or_path", world["model"], "--train_file", files["train"]),
        *("--validation_file", files["validation"], "--source_prefix", "summarize: ", "--output_dir", output_dir),
        *("--max_source_length", str(args.max_source_length), "--max_target_length", str(args.max_target_length)),
        *("--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", str(args.batch_size)),
        *("--learning_rate", "1e-3", "--seed", "0", "--overwrite_output_dir"),
    ]
    if system == "pytorch-loop":
        return common + ["--max_train_steps", str(args.steps), "--num_train_epochs", "1000"]
    steps = ["--max_steps", str(args.steps), "--do_train", "--do_eval"]
    if system == "pytorch-trainer":
        return common + steps + ["--report_to", "none", "--save_strategy", "no", "--predict_with_generate"]
    return common + steps + ["--save_steps", str(args.steps + 1)]  # no checkpoint inside the measured run


def run(system: str, world: dict, scratch: str, args, repeat: int) -> dict:
    python = args.tf_python if system == "tensorflow-keras" else sys.executable
    output_dir = os.path.join(scratch, f"{system}-{repeat}")
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [python, SCRIPTS[system], *flags(system, world, output_dir, args)], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise SystemExit(f"{system} failed:\n{result.stderr[-3000:]}")
    with open(os.path.join(output_dir, "all_results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    return {key: results.get(key) for key in FIGURES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_source_length", type=int, default=256)
    parser.add_argument("--max_target_length", type=int, default=48)
    parser.add_argument("--eval_examples", type=int, default=64)
    parser.add_argument("--tf_python", default=os.path.join(REPO, ".venv-tf", "bin", "python"))
    args = parser.parse_args()
    if not os.path.exists(args.tf_python):
        raise SystemExit(f"{args.tf_python} is missing: `make test-tf` (or make bench-tf) builds .venv-tf.")
    with tempfile.TemporaryDirectory(prefix="seqtune-bench-tf-") as scratch:
        world = build_world(scratch, args.size, args.steps * args.batch_size, args.eval_examples, 1, seed=0)
        runs = {system: [run(system, world, scratch, args, r) for r in range(args.repeats)] for system in SCRIPTS}
    print(
        f"\nmodel {args.size}, {args.steps} steps x batch {args.batch_size}, {args.eval_examples} eval examples, "
        f"median of {args.repeats}; ratio = system / pytorch-trainer"
    )
    print(f"{'figure':<28}" + "".join(f"{system:>20}" for system in SCRIPTS) + f"{'tf/trainer':>12}")
    for figure in FIGURES:
        medians = {system: statistics.median(r[figure] for r in runs[system]) for system in SCRIPTS}
        ratio = medians["tensorflow-keras"] / medians["pytorch-trainer"] if medians["pytorch-trainer"] else None
        row = "".join(f"{medians[system]:>20.3f}" for system in SCRIPTS)
        print(f"{figure:<28}{row}{'' if ratio is None else f'{ratio:>12.2f}'}")


if __name__ == "__main__":
    main()
