#!/usr/bin/env python
"""DeepSpeed ZeRO and FSDP against DDP: per-process peak memory and step time, in one invocation.

The Trainer script under `torchrun --nproc_per_node N` (CPU processes on gloo without a GPU) on the same
model, data and steps, once per way of training: DDP (every process holds the weights, gradients and
AdamW state), ZeRO-2 (gradients and optimizer state sharded), ZeRO-3 (the weights too), ZeRO-3 with the
optimizer state and weights offloaded to CPU memory (meaningful on GPUs; on a CPU it only moves bytes), FSDP
(--fsdp "full_shard auto_wrap": on GPUs transformers' FSDP, on CPUs seqtune's FSDP2: weights, gradients and
AdamW state sharded). Then the Accelerate script, DDP and --fsdp (seqtune's FSDP2), compared with each other.
Printed: the largest peak RSS of one process (wait4 on torchrun: the largest of its descendants), the
mean step time (Trainer: train_runtime / steps; Accelerate script: the time between its first and last
logged steps / their number, so its evaluation is left out), the final training loss, and each ratio
against the DDP run of the same script.

    python benchmarks/bench_sharding.py                       # t5-small shapes (60M parameters), 2 processes
    python benchmarks/bench_sharding.py --size small --steps 6

On a GPU machine the same command measures CPU RSS, not GPU memory: see scripts/gpu_check.sh there.
Nothing is downloaded: seqtune.demo's model builder and synthetic corpus.
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
TRAINER_SCRIPT = os.path.join(REPO, "examples", "pytorch", "summarization", "run_summarization.py")
LOOP_SCRIPT = os.path.join(REPO, "examples", "pytorch", "summarization", "run_summarization_no_trainer.py")
CONFIGS = os.path.join(REPO, "configs", "deepspeed")
WAYS = {  # label: the extra flags of the Trainer script, or of the Accelerate script ("loop" labels)
    "DDP": [],
    "ZeRO-2": ["--deepspeed", os.path.join(CONFIGS, "zero2.json")],
    "ZeRO-3": ["--deepspeed", os.path.join(CONFIGS, "zero3.json")],
    "ZeRO-3 offload": ["--deepspeed", os.path.join(CONFIGS, "zero3_offload.json")],
    "FSDP": ["--fsdp", "full_shard auto_wrap"],  # on CPUs: seqtune's FSDP2 inside the Trainer
    "loop DDP": [],
    "loop FSDP": ["--fsdp"],
}


def is_loop(label: str) -> bool:
    return label.startswith("loop")


def baseline(label: str) -> str:
    """The run a row is compared with: DDP of the same script."""
    return "loop DDP" if is_loop(label) else "DDP"


def build_inputs(root: str, size: str, documents: int) -> dict:
    from seqtune.demo import make_base_model, synthetic_corpus, write_jsonl

    rows = synthetic_corpus(documents + 16, seed=0, filler_range=(10, 60))
    return {
        "model": make_base_model(os.path.join(root, "model"), kind="t5", seed=0, size=size),
        "train": write_jsonl(os.path.join(root, "train.jsonl"), rows[16:]),
        "validation": write_jsonl(os.path.join(root, "validation.jsonl"), rows[:16]),
    }


def run(label: str, inputs: dict, scratch: str, args, port: int) -> dict:
    out = os.path.join(scratch, label.replace(" ", "-"))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes)]
    command += ["--master_port", str(port), LOOP_SCRIPT if is_loop(label) else TRAINER_SCRIPT, "--output_dir", out]
    command += ["--model_name_or_path", inputs["model"], "--train_file", inputs["train"]]
    command += ["--validation_file", inputs["validation"], "--source_prefix", "summarize: "]
    command += ["--max_source_length", "256", "--max_target_length", "32", "--per_device_train_batch_size", "4"]
    command += ["--learning_rate", "1e-4", "--seed", "0", "--report_to", "none", "--logging_steps", "1"]
    if is_loop(label):  # it evaluates at the end: a few examples (left out of the step time)
        command += [
            "--max_train_steps",
            str(args.steps),
            "--max_eval_samples",
            "4",
            "--per_device_eval_batch_size",
            "2",
        ]
    else:
        command += ["--do_train", "--max_steps", str(args.steps), "--save_strategy", "no", "--disable_tqdm", "true"]
    command += WAYS[label]
    env = dict(os.environ, SEQTUNE_PROGRESS="", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // args.processes)))
    log_path = out + ".log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        sys.exit(f"{label} failed (log {log_path}):\n{open(log_path, errors='replace').read()[-3000:]}")
    with open(os.path.join(out, "train_results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    return {
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "step_s": loop_step_time(out) if is_loop(label) else results["train_runtime"] / args.steps,
        "train_loss": results["train_loss"],
    }


def loop_step_time(out: str) -> float:
    """Mean time of the Accelerate script's steps after the first, from its log_history.jsonl."""
    with open(os.path.join(out, "log_history.jsonl"), encoding="utf-8") as handle:
        times = [event["time"] for event in map(json.loads, handle) if event.get("event") == "train"]
    return (times[-1] - times[0]) / max(len(times) - 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="t5-small", help="Model size (seqtune.demo.MODEL_SIZES).")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--documents", type=int, default=400)
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS), help="Which runs (DDP first).")
    args = parser.parse_args()

    import torch

    from seqtune.sharding import use_venv_extensions_dir

    use_venv_extensions_dir()  # DeepSpeed's compiled op: built once per venv (minutes the first time)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-sharding-") as scratch:
        inputs = build_inputs(scratch, args.size, args.documents)
        figures = {label: run(label, inputs, scratch, args, 29500 + i) for i, label in enumerate(args.ways)}
    load = os.getloadavg()[0]
    parameters = {"tiny": "~1M", "small": "~7M", "t5-small": "~60M"}.get(args.size, "?")
    print(
        f"== DeepSpeed ZeRO and FSDP vs DDP: {args.size} T5 ({parameters} parameters), {args.processes} "
        f"processes ({'GPU' if torch.cuda.is_available() else 'CPU, gloo'}), {args.steps} steps of 4 per process; "
        f"{os.cpu_count()}-core machine, torch {torch.__version__}; load average {load:.1f}; "
        f"{time.time() - started:.0f} s in all =="
    )
    print(f"{'':16}{'peak RSS/proc MB':>18}{'step s':>10}{'train loss':>12}{'RSS / DDP':>12}{'step / DDP':>12}")
    print("(DDP: the same script's; 'loop': the Accelerate script, the others the Trainer script)")
    for label, row in figures.items():
        line = f"{label:16}{row['peak_rss_mb']:>18.0f}{row['step_s']:>10.3f}{row['train_loss']:>12.4f}"
        base = figures.get(baseline(label))
        if base:
            line += f"{row['peak_rss_mb'] / base['peak_rss_mb']:>12.3f}{row['step_s'] / base['step_s']:>12.3f}"
        print(line)


if __name__ == "__main__":
    main()
