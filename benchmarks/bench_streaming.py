#!/usr/bin/env python
"""--streaming against in-memory data, with seqtune's Accelerate script, in one invocation.

Three questions, each answered beside its baseline:

1. Memory and disk with a 10x larger corpus: the same run (same model, steps, batches) on a corpus of
   N and of 10 N documents, in memory (datasets reads and tokenizes it all into its cache first) and
   as a stream. Printed: peak RSS of the training process, bytes written to the datasets cache, and
   start-up time (process start to the first training step, from the log).
2. Training speed on the same data: examples per second over the whole run (train_runtime from the
   results: in memory the tokenization happened before, in the stream it happens during training, so
   the stream's figure includes it), and the end-to-end wall time of each run.
3. Time to resume: how long the stream takes to give the first example after a checkpoint taken after
   K and after 10 K examples (it reads one block again, whatever K is), against reading one's way past
   the K examples seen, which is what a stream without positions (the Trainer with an IterableDataset)
   does. Each time is the best and the median of --resume_repeats; and, to tell the block read again
   from K, the resume time at the middle of every block up to 10 K, beside that block's tokens, and the
   resumes at K and 10 K on a corpus of identical blocks (the same block read again: K alone differs).
4. Prediction on a 10x larger test set: the Trainer script predicting (generation) for a test set of P
   and of 10 P documents, in memory and as a stream (--do_predict only): peak RSS, cache written,
   predictions per second.

    python benchmarks/bench_streaming.py                  # small model, 2,000 / 20,000 documents (minutes)
    python benchmarks/bench_streaming.py --size tiny --documents 500 --steps 20
    python benchmarks/bench_streaming.py --parts predict,resume   # some of the questions only

Nothing is downloaded: bench_summarization.py's model builder and synthetic corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "src"))
LOOP_SCRIPT = os.path.join(REPO, "examples", "pytorch", "summarization", "run_summarization_no_trainer.py")
TRAINER_SCRIPT = os.path.join(REPO, "examples", "pytorch", "summarization", "run_summarization.py")
PARTS = ("train", "resume", "predict")


def build_corpora(root: str, size: str, documents: int, seed: int, predict_documents: int) -> dict:
    from seqtune.demo import make_base_model, synthetic_corpus, write_jsonl

    model = make_base_model(os.path.join(root, f"model-{size}"), kind="t5", seed=seed, size=size)
    rows = synthetic_corpus(10 * documents + 64, seed=seed, filler_range=(10, 165), mentions=True)
    return {
        "model": model,
        "validation": write_jsonl(os.path.join(root, "validation.jsonl"), rows[:64]),
        "1x": write_jsonl(os.path.join(root, "train-1x.jsonl"), rows[64 : 64 + documents]),
        "10x": write_jsonl(os.path.join(root, "train-10x.jsonl"), rows[64:]),
        "test-1x": write_jsonl(os.path.join(root, "test-1x.jsonl"), rows[64 : 64 + predict_documents]),
        "test-10x": write_jsonl(os.path.join(root, "test-10x.jsonl"), rows[64 : 64 + 10 * predict_documents]),
    }


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def run_loop(config: dict, corpus: str, streaming: bool, scratch: str, args) -> dict:
    """One run of the Accelerate script in a fresh process; its peak RSS from wait4."""
    name = f"{'stream' if streaming else 'memory'}-{corpus}"
    out = os.path.join(scratch, name)
    flags = ["--model_name_or_path", config["model"], "--train_file", config[corpus]]
    flags += ["--validation_file", config["validation"], "--max_eval_samples", "8", "--output_dir", out]
    flags += ["--source_prefix", "summarize: ", "--max_source_length", "512", "--max_target_length", "32"]
    flags += ["--val_max_target_length", "8", "--per_device_train_batch_size", str(args.batch_size)]
    flags += ["--max_train_steps", str(args.steps), "--learning_rate", "1e-3", "--seed", "0", "--report_to", "none"]
    flags += ["--checkpointing_steps", str(args.steps), "--logging_steps", "1"]
    if streaming:
        flags += ["--streaming", "--shuffle_buffer_size", str(args.buffer)]
    run = run_measured(LOOP_SCRIPT, flags, name, scratch)
    return {**run, "samples_per_s": run["results"]["train_samples_per_second"]}


def run_measured(script: str, flags: list[str], name: str, scratch: str) -> dict:
    """One run of `script` in a fresh process with its own datasets cache: peak RSS (from wait4), cache written,
    start-up time, wall time and its all_results.json."""
    out, cache = flags[flags.index("--output_dir") + 1], os.path.join(scratch, f"cache-{name}")
    env = dict(os.environ, HF_DATASETS_CACHE=cache, SEQTUNE_PROGRESS="")
    started = time.time()
    log_path = os.path.join(scratch, f"{name}.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, script, *flags], stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.time() - started
    text = open(log_path, errors="replace").read()
    if status != 0:
        sys.exit(f"{name} failed:\n{text[-3000:]}")
    return {
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cache_mb": folder_bytes(cache) / 2**20 if os.path.isdir(cache) else 0.0,
        "startup_s": startup_seconds(text, started),
        "wall_s": wall,
        "results": json.load(open(os.path.join(out, "all_results.json"))),
    }


def run_predict(config: dict, test: str, streaming: bool, scratch: str, args) -> dict:
    """The Trainer script predicting (generation, no training) for the test set `test` ("test-1x", "test-10x")."""
    name = f"predict-{'stream' if streaming else 'memory'}-{test}"
    flags = ["--model_name_or_path", config["model"], "--test_file", config[test], "--do_predict"]
    flags += ["--predict_with_generate", "--output_dir", os.path.join(scratch, name), "--source_prefix", "summarize: "]
    flags += ["--max_source_length", "512", "--generation_max_length", "8", "--per_device_eval_batch_size", "16"]
    flags += ["--report_to", "none", "--seed", "0"]
    if streaming:
        flags += ["--streaming", "--shuffle_buffer_size", str(args.predict_window)]
    run = run_measured(TRAINER_SCRIPT, flags, name, scratch)
    return {**run, "samples_per_s": run["results"]["predict_samples_per_second"]}


def startup_seconds(log: str, started: float) -> float:
    """Process start to the log line of the first training step (HH:MM:SS in the log)."""
    match = re.search(r"^(\d\d):(\d\d):(\d\d) INFO .*step 1/", log, flags=re.M)
    if not match:
        return float("nan")
    hours, minutes, seconds = map(int, match.groups())
    start = time.localtime(started)
    first = hours * 3600 + minutes * 60 + seconds
    return max(first - (start.tm_hour * 3600 + start.tm_min * 60 + start.tm_sec), 0)


def resume_times(config: dict, args) -> dict:
    """Seconds to the first example after a checkpoint at K and 10 K examples: the stream's position (best and
    median of --resume_repeats) against reading past the examples seen (best of 3); and the resume time in the
    middle of every block up to 10 K (best of 3) beside the block's tokens."""
    from transformers import AutoTokenizer

    from seqtune.streaming import Corpus, JsonLinesFile, TrainingStream

    tokenizer = AutoTokenizer.from_pretrained(config["model"])

    def encode(texts, targets):
        model_inputs = tokenizer(["summarize: " + t for t in texts], max_length=512, truncation=True)
        model_inputs["labels"] = tokenizer(text_target=targets, max_length=32, truncation=True)["input_ids"]
        return model_inputs

    def stream(path=config["10x"]):
        corpus = Corpus([JsonLinesFile(path)], "document", "summary")
        return TrainingStream(corpus, encode, block_size=args.buffer, group_size=args.batch_size, seed=0)

    seen = {"K": args.resume_examples, "10 K": 10 * args.resume_examples}
    blocks = -(-max(seen.values()) // args.buffer)
    same_blocks = same_block_times(stream, seen, blocks, config["10x"], args)
    middles = {block * args.buffer + args.buffer // 2: block for block in range(blocks)}
    reader, positions, block_positions, block_tokens = stream(), {}, {}, [0] * blocks
    for count, example in enumerate(reader, start=1):
        block_tokens[(count - 1) // args.buffer] += len(example["input_ids"])
        for label, wanted in seen.items():
            if count == wanted:
                positions[label] = reader.position_at(count)
        if count in middles:
            block_positions[middles[count]] = reader.position_at(count)
        if count == blocks * args.buffer:
            break

    def resume_at(position) -> None:
        resumed = stream()
        resumed.resume(position)
        next(iter(resumed))

    def read_past(count: int) -> None:
        skipping = iter(stream())
        for _ in range(count + 1):
            next(skipping)

    times = {}
    for label, position in positions.items():  # against the noise of a shared machine
        walls, cpus = timed(args.resume_repeats, resume_at, position)
        times[f"stream, resume after {label}"] = min(walls)
        times[f"stream, resume after {label} (median)"] = sorted(walls)[len(walls) // 2]
        times[f"stream, resume after {label} (CPU, median)"] = sorted(cpus)[len(cpus) // 2]
        times[f"read past, after {label}"] = min(timed(3, read_past, seen[label])[0])
    sweep = []
    for block in sorted(block_positions):
        walls, cpus = timed(3, resume_at, block_positions[block])
        sweep.append((block, block_tokens[block], min(walls), sorted(cpus)[1]))
    return {"times": times, "sweep": sweep, "same_blocks": same_blocks}


def same_block_times(stream, seen: dict, blocks: int, corpus: str, args) -> dict:
    """Resume after K and after 10 K on a corpus whose blocks all hold the same documents (its first block,
    repeated): the block read again is then the same work at K and at 10 K, so what differs is K alone (on the
    ordinary corpus the two blocks differ, and their tokenizing time with them). The resumes at K and 10 K
    alternate, so a change in the machine's load falls on both."""
    with open(corpus, encoding="utf-8") as handle:
        first_block = [line for _, line in zip(range(args.buffer), handle)]
    repeated = os.path.join(os.path.dirname(corpus), "same-blocks.jsonl")
    with open(repeated, "w", encoding="utf-8") as handle:
        handle.writelines(first_block * (blocks + 1))
    reader, positions = stream(repeated), {}
    for count, _ in enumerate(reader, start=1):
        for label, wanted in seen.items():
            if count == wanted:
                positions[label] = reader.position_at(count)
        if len(positions) == len(seen):
            break

    def resume_at(position) -> None:
        resumed = stream(repeated)
        resumed.resume(position)
        next(iter(resumed))

    walls: dict = {label: [] for label in seen}
    cpus: dict = {label: [] for label in seen}
    for _ in range(args.resume_repeats):
        for label in seen:
            wall, cpu = timed(1, resume_at, positions[label])
            walls[label] += wall
            cpus[label] += cpu
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    return {label: (min(walls[label]), median(walls[label]), median(cpus[label])) for label in seen}


def timed(repeats: int, work, *args) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (all threads of this process: what a loaded machine does not inflate) of each run."""
    walls, cpus = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        work(*args)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - started_cpu)
    return walls, cpus


def print_table(runs: dict, rows: list, columns: list) -> None:
    """Rows of the four runs (memory/stream x 1x/10x) and their ratios."""
    print(
        f"{'':32}"
        + "".join(f"{m + ' ' + c:>14}" for m, c in columns)
        + f"{'10x/1x mem':>12}{'10x/1x str':>12}{'str/mem 1x':>12}"
    )
    (memory_1, memory_10, stream_1, stream_10) = columns
    for label, key, form in rows:
        values = [runs[c][key] for c in columns]
        ratios = [
            runs[memory_10][key] / max(runs[memory_1][key], 1e-9),
            runs[stream_10][key] / max(runs[stream_1][key], 1e-9),
            runs[stream_1][key] / max(runs[memory_1][key], 1e-9),
        ]
        print(f"{label:32}" + "".join(f"{form.format(v):>14}" for v in values) + "".join(f"{r:>12.3f}" for r in ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", help="Model size (tiny, small: seqtune.demo.make_base_model).")
    parser.add_argument("--documents", type=int, default=2000, help="Documents of the 1x corpus (10x: ten times).")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--buffer", type=int, default=1000, help="--shuffle_buffer_size of the stream.")
    parser.add_argument("--resume_examples", type=int, default=1500, help="K: examples seen before the checkpoint.")
    parser.add_argument("--resume_repeats", type=int, default=9, help="Resumes timed at K and at 10 K each.")
    parser.add_argument("--predict_documents", type=int, default=200, help="P: the 1x test set (10x: ten times).")
    parser.add_argument("--predict_window", type=int, default=100, help="--shuffle_buffer_size when predicting.")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"Which questions, of {', '.join(PARTS)}.")
    args = parser.parse_args()
    parts = args.parts.split(",")

    import torch

    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as scratch:
        config = build_corpora(scratch, args.size, args.documents, seed=0, predict_documents=args.predict_documents)
        modes = ("memory", "stream")
        runs = {
            (mode, corpus): run_loop(config, corpus, mode == "stream", scratch, args)
            for corpus in ("1x", "10x")
            for mode in modes
            if "train" in parts
        }
        predictions = {
            (mode, test): run_predict(config, f"test-{test}", mode == "stream", scratch, args)
            for test in ("1x", "10x")
            for mode in modes
            if "predict" in parts
        }
        resume = resume_times(config, args) if "resume" in parts else None

    load = os.getloadavg()[0]
    machine = f"{os.cpu_count()}-core CPU, torch {torch.__version__}; load average {load:.1f}"
    columns = [("memory", "1x"), ("memory", "10x"), ("stream", "1x"), ("stream", "10x")]
    footprint = [("peak RSS (MB)", "peak_rss_mb", "{:.0f}"), ("datasets cache written (MB)", "cache_mb", "{:.1f}")]
    wall = ("end-to-end wall (s)", "wall_s", "{:.1f}")
    if runs:
        print(
            f"== --streaming vs in memory: {args.size} T5, Accelerate script, {args.steps} steps of "
            f"{args.batch_size}, corpus 1x = {args.documents:,} documents, 10x = {10 * args.documents:,}; shuffle "
            f"buffer {args.buffer}; {machine} =="
        )
        rows = [("start-up to step 1 (s)", "startup_s", "{:.0f}"), ("train samples/s", "samples_per_s", "{:.2f}")]
        print_table(runs, [*footprint, *rows, wall], columns)
    if predictions:
        print(
            f"\n== prediction (--do_predict, generation of 8 tokens, batches of 16): {args.size} T5, Trainer script, "
            f"test set 1x = {args.predict_documents:,} documents, 10x = {10 * args.predict_documents:,}; stream "
            f"windows of {args.predict_window}; {machine} =="
        )
        print_table(predictions, [*footprint, ("predictions/s", "samples_per_s", "{:.2f}"), wall], columns)
    if resume:
        times = resume["times"]
        print(
            f"\n== time to the first example after a checkpoint (K = {args.resume_examples:,} examples seen; "
            f"the stream's best and median of {args.resume_repeats}) =="
        )
        for label, seconds in times.items():
            print(f"{label:40}{seconds:>10.3f} s")
        for kind in ("", " (median)", " (CPU, median)"):
            ratio = times[f"stream, resume after 10 K{kind}"] / times[f"stream, resume after K{kind}"]
            print(f"{'10 K / K, stream position' + (kind or ' (best)'):40}{ratio:>10.3f}")
        read_ratio = times["read past, after 10 K"] / times["read past, after K"]
        print(f"{'10 K / K, reading past':40}{read_ratio:>10.3f}")
        same = resume["same_blocks"]
        print(
            f"\n== the same, on a corpus of identical blocks (the block read again is the same work at K and 10 K; "
            f"{args.resume_repeats} alternating resumes) =="
        )
        print(f"{'':24}{'best wall s':>12}{'median wall s':>15}{'median CPU s':>14}")
        for label, (best, median_wall, median_cpu) in same.items():
            print(f"{'resume after ' + label:24}{best:>12.3f}{median_wall:>15.3f}{median_cpu:>14.3f}")
        ratios = [same["10 K"][i] / same["K"][i] for i in range(3)]
        print(f"{'10 K / K':24}{ratios[0]:>12.3f}{ratios[1]:>15.3f}{ratios[2]:>14.3f}")
        print(f"\n== resume in the middle of each block of {args.buffer} (of 3: best wall, median CPU) ==")
        print(f"{'block':>6}{'examples before':>17}{'tokens':>10}{'wall s':>10}{'CPU s':>10}{'CPU s/100K tokens':>19}")
        for block, tokens, wall, cpu in resume["sweep"]:
            before = block * args.buffer + args.buffer // 2
            print(f"{block:>6}{before:>17,}{tokens:>10,}{wall:>10.3f}{cpu:>10.3f}{cpu / tokens * 1e5:>19.3f}")
        for column, name in ((2, "wall"), (3, "CPU")):
            seconds = [row[column] for row in resume["sweep"]]
            print(
                f"{name} spread: {min(seconds):.3f} to {max(seconds):.3f} s (max/min {max(seconds) / min(seconds):.3f})"
            )


if __name__ == "__main__":
    main()
