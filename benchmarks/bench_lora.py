#!/usr/bin/env python
"""LoRA adapters (--lora_r) against full fine-tuning, with seqtune's Trainer script, in one invocation.

LoRA adapts a pre-trained model; the benchmark's models have random weights, so a stand-in is made first:
the model of --size is fully trained for --pretrain_steps on a corpus of its own (another seed). From that
base, both runs take the same --steps on the same data with the same batches: every weight (AdamW, --full_lr)
or LoRA adapters of rank --lora_r on the default layers (q and v of T5; --lora_lr, higher as usual for LoRA).
Each runs in a fresh interpreter, and the benchmark prints per system:

- trainable parameters;
- step time: the wall time between the training-loss logs of step 10 and of the last step, per step
  (start-up, the checkpoint and evaluation are left out);
- peak memory: the process's peak RSS (and peak GPU memory on a GPU); and the training state as computed
  (weights, their gradients and AdamW's two moments of the trained ones, float32);
- size of the checkpoint written at the last step, and of the final model files;
- eval loss and ROUGE after the same steps (greedy generation on the validation split).

    python benchmarks/bench_lora.py                             # small model, 60 + 60 steps (minutes on a CPU)
    python benchmarks/bench_lora.py --size tiny --pretrain_steps 20 --steps 20

Nothing is downloaded: bench_summarization.py's model builder and synthetic corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, HERE)

from bench_summarization import build_world, common_flags, read_results  # noqa: E402

SYSTEMS = ("base", "full", "lora")
LABELS = {"base": "base (no fine-tuning)", "full": "full fine-tuning", "lora": "LoRA"}


# --------------------------------------------------------------------------- workers (one per subprocess)


def trainer_flags(config: dict, output_dir: str, system: str) -> list[str]:
    """The Trainer script's flags of one system (pretrain: the stand-in base model; base: evaluation only)."""
    flags = common_flags(config, output_dir)
    flags += ["--report_to", "none", "--predict_with_generate", "--disable_tqdm", "true", "--logging_steps", "10"]
    flags += ["--max_eval_samples", str(config["evaluation"]), "--do_eval"]
    if system == "pretrain":
        flags[flags.index(config["files"]["train"])] = config["files"]["pretrain"]
        return flags + ["--do_train", "--max_steps", str(config["pretrain_steps"]), "--save_strategy", "no"]
    if system == "base":
        return flags
    steps = str(config["steps"])
    flags += ["--do_train", "--max_steps", steps, "--save_steps", steps]
    if system == "lora":
        flags[flags.index("--learning_rate") + 1] = str(config["lora_lr"])
        flags += ["--lora_r", str(config["lora_r"])]
    return flags


def step_time_ms(output_dir: str, steps: int) -> float | None:
    """Milliseconds per optimizer step between the loss logs of step 10 and of the last step."""
    from seqtune.report import read_log

    times = {event["step"]: event["time"] for event in read_log(output_dir) if event.get("event") == "train"}
    if 10 not in times or steps not in times or steps <= 10:
        return None
    return 1000 * (times[steps] - times[10]) / (steps - 10)


def folder_mb(folder: str) -> float:
    sizes = [os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names]
    return sum(sizes) / 2**20


def parameter_counts(model_path: str, system: str, lora_r: int) -> tuple[int, int]:
    """(trainable, all) parameters of the model a system trains."""
    from transformers import AutoModelForSeq2SeqLM

    from seqtune.adapters import apply_lora
    from seqtune.arguments import ModelArguments

    model = AutoModelForSeq2SeqLM.from_pretrained(model_path)
    if system == "lora":
        model = apply_lora(model, ModelArguments(model_name_or_path=model_path, lora_r=lora_r))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def worker(system: str, config: dict, output_dir: str) -> dict:
    from seqtune.recipes.trainer import main

    main(trainer_flags(config, output_dir, system))
    results = read_results(output_dir)
    figures = {key: results.get(key) for key in ("eval_loss", "eval_rouge1", "eval_rouge2", "eval_rougeL")}
    if system in ("pretrain", "base"):
        return figures
    steps = config["steps"]
    trainable, total = parameter_counts(config["model"], system, config["lora_r"])
    weights = "adapter_model.safetensors" if system == "lora" else "model.safetensors"
    figures.update(
        trainable=trainable,
        total=total,
        step_ms=step_time_ms(output_dir, steps),
        # float32 weights, the gradients of the trained ones, AdamW's two moments of them
        state_mb=(4 * total + 4 * trainable + 8 * trainable) / 2**20,
        checkpoint_mb=folder_mb(os.path.join(output_dir, f"checkpoint-{steps}")),
        model_file_mb=os.path.getsize(os.path.join(output_dir, weights)) / 2**20,
    )
    return figures


def run_worker(system: str, config: dict, scratch: str) -> tuple[dict, str]:
    """One system in a fresh interpreter; returns its figures (with peak memory) and output dir."""
    output_dir = os.path.join(scratch, system)
    config_path = os.path.join(scratch, f"{system}.json")
    with open(config_path, "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["HF_DATASETS_CACHE"] = os.path.join(scratch, f"datasets-cache-{system}")
    command = [sys.executable, os.path.abspath(__file__), "--worker", system, "--config", config_path]
    started = time.perf_counter()
    process = subprocess.run(command + ["--output_dir", output_dir], capture_output=True, text=True, env=env)
    if process.returncode != 0:
        raise SystemExit(f"{system} failed (exit {process.returncode}):\n{process.stderr[-4000:]}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result, output_dir


# --------------------------------------------------------------------------- the report

ROWS = [
    ("trainable", "trainable parameters", "{:,.0f}"),
    ("step_ms", "step time (ms)", "{:,.0f}"),
    ("peak_rss_mb", "peak RSS (MB)", "{:,.0f}"),
    ("peak_gpu_mb", "peak GPU memory (MB)", "{:,.0f}"),
    ("state_mb", "training state (MB, computed)", "{:,.1f}"),
    ("checkpoint_mb", "checkpoint size (MB)", "{:,.2f}"),
    ("model_file_mb", "final weights file (MB)", "{:,.2f}"),
    ("eval_loss", "eval loss", "{:.3f}"),
    ("eval_rouge1", "ROUGE-1", "{:.2f}"),
    ("eval_rouge2", "ROUGE-2", "{:.2f}"),
    ("eval_rougeL", "ROUGE-L", "{:.2f}"),
    ("wall_s", "end-to-end wall (s)", "{:,.1f}"),
]


def table(results: dict[str, dict], lora_r: int) -> str:
    names = [name for name in SYSTEMS if name in results]
    headers = {"base": "base", "full": "full", "lora": f"LoRA r={lora_r}"}
    lines = [f"{'':<32}" + "".join(f"{headers[name]:>14}" for name in names) + f"{'LoRA/full':>12}"]
    for key, label, form in ROWS:
        values = [results[name].get(key) for name in names]
        if all(value is None for value in values):
            continue
        cells = "".join(f"{(form.format(v) if v is not None else '-'):>14}" for v in values)
        full, lora = results.get("full", {}).get(key), results.get("lora", {}).get(key)
        ratio = f"{lora / full:.3f}" if key != "eval_loss" and full and lora is not None else "-"
        lines.append(f"{label:<32}{cells}{ratio:>12}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", help="model size of seqtune.demo.MODEL_SIZES (default: small)")
    parser.add_argument("--pretrain_steps", type=int, default=60, help="full training of the stand-in base model")
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps of each system")
    parser.add_argument("--train", type=int, default=480, help="training examples (and as many for pre-training)")
    parser.add_argument("--evaluation", type=int, default=64, help="evaluation examples")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--full_lr", type=float, default=3e-4, help="learning rate of full fine-tuning")
    parser.add_argument("--lora_lr", type=float, default=1e-3, help="learning rate of the LoRA run")
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # inside the subprocess
        import resource

        with open(args.config, encoding="utf-8") as handle:
            result = worker(args.worker, json.load(handle), args.output_dir)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
        import torch

        if torch.cuda.is_available():
            result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps(result))
        return

    scratch = args.workdir or tempfile.mkdtemp(prefix="seqtune-bench-lora-")
    os.makedirs(scratch, exist_ok=True)
    world = build_world(scratch, args.size, args.train, args.evaluation, 1, args.seed)
    from seqtune.demo import synthetic_corpus, write_jsonl

    rows = synthetic_corpus(args.train, seed=args.seed + 1, filler_range=(10, 165), mentions=True)
    world["files"]["pretrain"] = write_jsonl(os.path.join(scratch, "pretrain.jsonl"), rows)
    config = {
        **world,
        "max_source_length": 256,
        "max_target_length": 32,
        "batch_size": args.batch_size,
        "eval_batch_size": 32,
        "learning_rate": args.full_lr,
        "lora_lr": args.lora_lr,
        "lora_r": args.lora_r,
        "seed": args.seed,
        "steps": args.steps,
        "pretrain_steps": args.pretrain_steps,
        "evaluation": args.evaluation,
    }
    if args.pretrain_steps:
        print(f"pre-training the stand-in base model ({args.pretrain_steps} steps of full training) ...", flush=True)
        _, base_dir = run_worker("pretrain", config, scratch)
        config["model"] = base_dir  # the base both systems start from (its tokenizer and config are there)
    results = {}
    for system in SYSTEMS:
        print(f"running {LABELS[system]} ...", flush=True)
        results[system], _ = run_worker(system, config, scratch)
    import torch

    device = "GPU" if torch.cuda.is_available() else f"{os.cpu_count()}-core CPU"
    print(
        f"\n== LoRA vs full fine-tuning: {args.size} T5 model ({results['full']['total']:,} parameters), "
        f"{args.steps} steps from a base trained {args.pretrain_steps} steps, batch {args.batch_size}, "
        f"{args.evaluation} evaluation examples, lr full {args.full_lr:g} / LoRA {args.lora_lr:g}, "
        f"{device}, torch {torch.__version__} =="
    )
    print(table(results, args.lora_r))


if __name__ == "__main__":
    main()
