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
   does.

    python benchmarks/bench_streaming.py                  # small model, 2,000 / 20,000 documents (minutes)
    python benchmarks/bench_streaming.py --size tiny --documents 500 --steps 20

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


def build_corpora(root: str, size: str, documents: int, seed: int) -> dict:
    from seqtune.demo import make_base_model, synthetic_corpus, write_jsonl

    model = make_base_model(os.path.join(root, f"model-{size}"), kind="t5", seed=seed, size=size)
    rows = synthetic_corpus(10 * documents + 64, seed=seed, filler_range=(10, 165), mentions=True)
    return {
        "model": model,
        "validation": write_jsonl(os.path.join(root, "validation.jsonl"), rows[:64]),
        "1x": write_jsonl(os.path.join(root, "train-1x.jsonl"), rows[64 : 64 + documents]),
        "10x": write_jsonl(os.path.join(root, "train-10x.jsonl"), rows[64:]),
    }


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def run_loop(config: dict, corpus: str, streaming: bool, scratch: str, args) -> dict:
    """One run of the Accelerate script in a fresh process; its peak RSS from wait4."""
    name = f"{'stream' if streaming else 'memory'}-{corpus}"
    out, cache = os.path.join(scratch, name), os.path.join(scratch, f"cache-{name}")
    flags = ["--model_name_or_path", config["model"], "--train_file", config[corpus]]
    flags += ["--validation_file", config["validation"], "--max_eval_samples", "8", "--output_dir", out]
    flags += ["--source_prefix", "summarize: ", "--max_source_length", "512", "--max_target_length", "32"]
    flags += ["--val_max_target_length", "8", "--per_device_train_batch_size", str(args.batch_size)]
    flags += ["--max_train_steps", str(args.steps), "--learning_rate", "1e-3", "--seed", "0", "--report_to", "none"]
    flags += ["--checkpointing_steps", str(args.steps), "--logging_steps", "1"]
    if streaming:
        flags += ["--streaming", "--shuffle_buffer_size", str(args.buffer)]
    env = dict(os.environ, HF_DATASETS_CACHE=cache, SEQTUNE_PROGRESS="")
    started = time.time()
    log_path = os.path.join(scratch, f"{name}.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, LOOP_SCRIPT, *flags], stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.time() - started
    text = open(log_path, errors="replace").read()
    if status != 0:
        sys.exit(f"{name} failed:\n{text[-3000:]}")
    results = json.load(open(os.path.join(out, "all_results.json")))
    return {
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cache_mb": folder_bytes(cache) / 2**20 if os.path.isdir(cache) else 0.0,
        "startup_s": startup_seconds(text, started),
        "samples_per_s": results["train_samples_per_second"],
        "wall_s": wall,
    }


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
    """Seconds to the first example after a checkpoint at K and 10 K examples: the stream's position against
    reading past the examples seen."""
    from transformers import AutoTokenizer

    from seqtune.streaming import Corpus, JsonLinesFile, TrainingStream

    tokenizer = AutoTokenizer.from_pretrained(config["model"])

    def encode(texts, targets):
        model_inputs = tokenizer(["summarize: " + t for t in texts], max_length=512, truncation=True)
        model_inputs["labels"] = tokenizer(text_target=targets, max_length=32, truncation=True)["input_ids"]
        return model_inputs

    def stream():
        corpus = Corpus([JsonLinesFile(config["10x"])], "document", "summary")
        return TrainingStream(corpus, encode, block_size=args.buffer, group_size=args.batch_size, seed=0)

    seen = {"K": args.resume_examples, "10 K": 10 * args.resume_examples}
    reader, positions = stream(), {}
    for count, _ in enumerate(reader, start=1):
        for label, wanted in seen.items():
            if count == wanted:
                positions[label] = reader.position_at(count)
        if count == max(seen.values()):
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
    for label, position in positions.items():  # the best of 3, against the noise of a shared machine
        times[f"stream, resume after {label}"] = best_of(3, resume_at, position)
        times[f"read past, after {label}"] = best_of(3, read_past, seen[label])
    return times


def best_of(repeats: int, work, *args) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        work(*args)
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", help="Model size (tiny, small: seqtune.demo.make_base_model).")
    parser.add_argument("--documents", type=int, default=2000, help="Documents of the 1x corpus (10x: ten times).")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--buffer", type=int, default=1000, help="--shuffle_buffer_size of the stream.")
    parser.add_argument("--resume_examples", type=int, default=1500, help="K: examples seen before the checkpoint.")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as scratch:
        config = build_corpora(scratch, args.size, args.documents, seed=0)
        runs = {
            (mode, corpus): run_loop(config, corpus, mode == "stream", scratch, args)
            for corpus in ("1x", "10x")
            for mode in ("memory", "stream")
        }
        resume = resume_times(config, args)

    load = os.getloadavg()[0]
    print(
        f"== --streaming vs in memory: {args.size} T5, Accelerate script, {args.steps} steps of {args.batch_size}, "
        f"corpus 1x = {args.documents:,} documents, 10x = {10 * args.documents:,}; shuffle buffer {args.buffer}; "
        f"{os.cpu_count()}-core CPU, torch {torch.__version__}; load average {load:.1f} =="
    )
    rows = [
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("datasets cache written (MB)", "cache_mb", "{:.1f}"),
        ("start-up to step 1 (s)", "startup_s", "{:.0f}"),
        ("train samples/s", "samples_per_s", "{:.2f}"),
        ("end-to-end wall (s)", "wall_s", "{:.1f}"),
    ]
    columns = [("memory", "1x"), ("memory", "10x"), ("stream", "1x"), ("stream", "10x")]
    print(
        f"{'':32}"
        + "".join(f"{m + ' ' + c:>14}" for m, c in columns)
        + f"{'10x/1x mem':>12}{'10x/1x str':>12}{'str/mem 1x':>12}"
    )
    for label, key, form in rows:
        values = [runs[c][key] for c in columns]
        ratios = [
            runs[("memory", "10x")][key] / max(runs[("memory", "1x")][key], 1e-9),
            runs[("stream", "10x")][key] / max(runs[("stream", "1x")][key], 1e-9),
            runs[("stream", "1x")][key] / max(runs[("memory", "1x")][key], 1e-9),
        ]
        print(f"{label:32}" + "".join(f"{form.format(v):>14}" for v in values) + "".join(f"{r:>12.3f}" for r in ratios))
    print(f"\n== time to the first example after a checkpoint (K = {args.resume_examples:,} examples seen) ==")
    for label, seconds in resume.items():
        print(f"{label:36}{seconds:>10.3f} s")
    stream_ratio = resume["stream, resume after 10 K"] / resume["stream, resume after K"]
    read_ratio = resume["read past, after 10 K"] / resume["read past, after K"]
    print(f"{'10 K / K, stream position':36}{stream_ratio:>10.3f}")
    print(f"{'10 K / K, reading past':36}{read_ratio:>10.3f}")


if __name__ == "__main__":
    main()
