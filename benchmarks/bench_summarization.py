#!/usr/bin/env python
"""Benchmark seqtune's two scripts against the plain Seq2SeqTrainer pipeline, in one invocation.

The baseline is the pipeline the Hugging Face summarization example wires: tokenize with
`datasets.map`, pad per batch with `DataCollatorForSeq2Seq`, random sampling, `generate`
for evaluation and prediction, predictions accumulated by the Trainer. Every system runs
in its own subprocess on the same model, data and hyper-parameters; each is repeated and
the median is printed, with the ratio seqtune / baseline. The floor is the bare PyTorch
forward/backward/optimizer step on batches of the same size.

    python benchmarks/bench_summarization.py                 # tiny and small models
    python benchmarks/bench_summarization.py --sizes small --repeats 5
    make bench

Nothing is downloaded: models are built from configs with random weights and the corpus is
synthetic, with document lengths spread like news articles (about 100 to 1,500 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "src"))

SYSTEMS = ("baseline", "seqtune-trainer", "seqtune-loop")
# The quality comparison's default: the tiny model, for enough steps that it learns the task, not only a
# template, in a run a CPU finishes (its time and ROUGE: benchmarks/results/NOTES.md).
QUALITY_SIZE, QUALITY_STEPS = "tiny", 1000
# Learning rate of the quality runs, per model size: the small model barely learns at the tiny one's 1e-3 and
# learns at 3e-4; t5-small takes the small model's rate (measurements: benchmarks/results/NOTES.md).
QUALITY_LEARNING_RATES = {"tiny": 1e-3, "small": 3e-4, "t5-small": 3e-4}


# --------------------------------------------------------------------------- the world


def build_world(root: str, size: str, train: int, evaluation: int, test: int, seed: int) -> dict:
    """Model folder and JSON Lines files, written once and shared by every system."""
    from seqtune.demo import make_base_model, synthetic_corpus, write_jsonl

    model = make_base_model(os.path.join(root, f"model-{size}"), kind="t5", seed=seed, size=size)
    rows = synthetic_corpus(train + evaluation + 10 * test, seed=seed, filler_range=(10, 165), mentions=True)
    files = {
        "train": write_jsonl(os.path.join(root, "train.jsonl"), rows[:train]),
        "validation": write_jsonl(os.path.join(root, "validation.jsonl"), rows[train : train + evaluation]),
        "test": write_jsonl(os.path.join(root, "test.jsonl"), rows[train + evaluation : train + evaluation + test]),
        "test_10x": write_jsonl(os.path.join(root, "test_10x.jsonl"), rows[train + evaluation :]),
    }
    return {"model": model, "files": files}


# --------------------------------------------------------------------------- workers (one per subprocess)


def common_flags(config: dict, output_dir: str, test_key: str = "test") -> list[str]:
    files = config["files"]
    return [
        "--model_name_or_path",
        config["model"],
        "--train_file",
        files["train"],
        "--validation_file",
        files["validation"],
        "--test_file",
        files[test_key],
        "--source_prefix",
        "summarize: ",
        "--output_dir",
        output_dir,
        "--overwrite_output_dir",
        "--max_source_length",
        str(config["max_source_length"]),
        "--max_target_length",
        str(config["max_target_length"]),
        "--per_device_train_batch_size",
        str(config["batch_size"]),
        "--per_device_eval_batch_size",
        str(config["eval_batch_size"]),
        "--learning_rate",
        str(config["learning_rate"]),
        "--seed",
        str(config["seed"]),
        *(["--bf16"] if config.get("bf16") else []),
    ]


def read_results(output_dir: str) -> dict:
    with open(os.path.join(output_dir, "all_results.json"), encoding="utf-8") as handle:
        return json.load(handle)


def worker_seqtune_trainer(config: dict, output_dir: str) -> dict:
    from seqtune.recipes.trainer import main

    flags = common_flags(config, output_dir, config.get("test_key", "test"))
    flags += [
        "--report_to",
        "none",
        "--max_steps",
        str(config["steps"]),
        "--save_strategy",
        "no",
        "--logging_steps",
        "10",
        "--predict_with_generate",
        "--disable_tqdm",
        "true",
    ]
    flags += ["--do_predict"] if config.get("predict_only") else ["--do_train", "--do_eval", "--do_predict"]
    flags += config.get("extra_flags", [])
    main(flags)
    return normalise(read_results(output_dir), logged_losses(output_dir), config["steps"])


def worker_seqtune_trainer_random(config: dict, output_dir: str) -> dict:
    """The Trainer script in the baseline's random training order: the same computation as the
    baseline, so loss and ROUGE must match it; what remains is the speed of evaluation."""
    return worker_seqtune_trainer(dict(config, extra_flags=["--train_sampling_strategy", "random"]), output_dir)


def worker_baseline_reseeded(config: dict, output_dir: str) -> dict:
    """The baseline with another seed: the same model and data in another random order. How far its
    loss and ROUGE move from the baseline's is the noise that any change of batch order brings."""
    return worker_baseline(dict(config, seed=config["seed"] + 1), output_dir)


def worker_seqtune_loop(config: dict, output_dir: str) -> dict:
    from seqtune.recipes.accelerate_loop import main

    flags = common_flags(config, output_dir)
    flags += ["--max_train_steps", str(config["steps"]), "--do_predict", "--num_train_epochs", "1000"]
    main(flags)
    return normalise(read_results(output_dir), logged_losses(output_dir), config["steps"])


def logged_losses(output_dir: str) -> list[tuple[int, float]]:
    """(step, training loss) as seqtune's scripts logged them (the run log, every 10 steps here)."""
    from seqtune.report import read_log

    return [
        (event["step"], event["loss"])
        for event in read_log(output_dir)
        if event.get("event") == "train" and "loss" in event
    ]


def final_loss(losses: list[tuple[int, float]], steps: int):
    """The training loss at the end of the run: the mean of the losses logged over the last 10% of the
    steps (one logged value is noisy at batch 8), the last one logged if none falls there, None if none."""
    if not losses:
        return None
    window = [loss for step, loss in losses if step > 0.9 * steps]
    return statistics.mean(window) if window else losses[-1][1]


def normalise(results: dict, losses: list[tuple[int, float]], steps: int) -> dict:
    """The figures every system reports, under one set of names; `losses`: (step, loss) as logged."""
    return {
        "final_train_loss": final_loss(losses, steps),
        "tokenize_s": results.get("tokenize_runtime"),
        "train_s": results.get("train_runtime"),
        "train_samples_per_s": results.get("train_samples_per_second"),
        "eval_samples_per_s": results.get("eval_samples_per_second"),
        "predict_samples_per_s": results.get("predict_samples_per_second"),
        "train_loss": results.get("train_loss"),
        "eval_loss": results.get("eval_loss"),
        "eval_rouge1": results.get("eval_rouge1"),
        "eval_rouge2": results.get("eval_rouge2"),
        "eval_rougeL": results.get("eval_rougeL"),
        "eval_gen_len": results.get("eval_gen_len"),
    }


def worker_baseline(config: dict, output_dir: str) -> dict:
    """The Hugging Face example's pipeline, as plain as it is there."""
    import datasets
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        set_seed,
    )

    from seqtune.metrics import generation_length, rouge  # the same measures, so quality figures compare

    set_seed(config["seed"])
    files = config["files"]
    test_key = config.get("test_key", "test")
    raw = datasets.load_dataset(
        "json", data_files={"train": files["train"], "validation": files["validation"], "test": files[test_key]}
    )
    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    model = AutoModelForSeq2SeqLM.from_pretrained(config["model"])

    def preprocess(batch, max_target_length):
        inputs = ["summarize: " + text for text in batch["document"]]
        model_inputs = tokenizer(inputs, max_length=config["max_source_length"], truncation=True)
        model_inputs["labels"] = tokenizer(text_target=batch["summary"], max_length=max_target_length, truncation=True)[
            "input_ids"
        ]
        return model_inputs

    started = time.perf_counter()
    tokenized = {
        split: raw[split].map(
            preprocess,
            batched=True,
            remove_columns=raw[split].column_names,
            load_from_cache_file=False,
            fn_kwargs={"max_target_length": config["max_target_length"]},
        )
        for split in ("train", "validation", "test")
    }
    tokenize_s = time.perf_counter() - started

    def compute_metrics(prediction):
        generated, labels = prediction
        if isinstance(generated, tuple):
            generated = generated[0]
        generated = np.where(generated != -100, generated, tokenizer.pad_token_id)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        scores = rouge(
            tokenizer.batch_decode(generated, skip_special_tokens=True),
            tokenizer.batch_decode(labels, skip_special_tokens=True),
        )
        scores["gen_len"] = generation_length(generated, tokenizer.pad_token_id)
        return scores

    args = Seq2SeqTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=config["batch_size"],
        per_device_eval_batch_size=config["eval_batch_size"],
        learning_rate=config["learning_rate"],
        max_steps=config["steps"],
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        seed=config["seed"],
        predict_with_generate=True,
        generation_max_length=config["max_target_length"],
        disable_tqdm=True,
        dataloader_pin_memory=False,
        bf16=config.get("bf16", False),
        use_cpu=not torch.cuda.is_available(),  # else transformers refuses --bf16 on a CPU-only machine
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        compute_metrics=compute_metrics,
    )
    results = {"tokenize_runtime": tokenize_s}
    if not config.get("predict_only"):
        results.update(trainer.train().metrics)
        results.update(trainer.evaluate(metric_key_prefix="eval"))
    prediction = trainer.predict(tokenized["test"], metric_key_prefix="predict")
    results.update(prediction.metrics)
    generated = np.where(prediction.predictions != -100, prediction.predictions, tokenizer.pad_token_id)
    with open(os.path.join(output_dir, "generated_predictions.txt"), "w", encoding="utf-8") as handle:
        for text in tokenizer.batch_decode(generated, skip_special_tokens=True):
            handle.write(text.strip() + "\n")
    history = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    return normalise(results, history, config["steps"])


def worker_floor(config: dict, output_dir: str) -> dict:
    """Bare PyTorch: forward, backward, AdamW step on the batches seqtune trains on (no Trainer, no Accelerate)."""
    import datasets
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq

    torch.manual_seed(config["seed"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    model = AutoModelForSeq2SeqLM.from_pretrained(config["model"]).to(device)
    raw = datasets.load_dataset("json", data_files={"train": config["files"]["train"]})["train"]
    features = [
        {
            "input_ids": tokenizer(
                "summarize: " + row["document"], max_length=config["max_source_length"], truncation=True
            )["input_ids"],
            "labels": tokenizer(text_target=row["summary"], max_length=config["max_target_length"], truncation=True)[
                "input_ids"
            ],
        }
        for row in raw
    ]
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"], fused=True)
    # The batches seqtune trains on: its length-grouped order for this seed (epoch 0).
    from seqtune.batching import LengthGroupedSampler

    batch_size = config["batch_size"]
    sampler = LengthGroupedSampler([len(f["input_ids"]) for f in features], batch_size, config["seed"])
    order: list[int] = []
    while len(order) < batch_size * config["steps"]:  # as many epochs as the steps need
        sampler.set_epoch(len(order) // len(features))
        order += list(sampler)
    batches = [
        collator([features[i] for i in order[start : start + batch_size]])
        for start in range(0, batch_size * config["steps"], batch_size)
    ][: config["steps"]]
    batches = [{name: tensor.to(device) for name, tensor in batch.items()} for batch in batches]
    model.train()
    started = time.perf_counter()
    for batch in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(config.get("bf16"))):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {
        "train_s": elapsed,
        "train_samples_per_s": len(batches) * batch_size / elapsed,
        "step_ms": 1000 * elapsed / len(batches),
    }


WORKERS = {
    "baseline": worker_baseline,
    "seqtune-trainer": worker_seqtune_trainer,
    "seqtune-loop": worker_seqtune_loop,
    "seqtune-trainer-random": worker_seqtune_trainer_random,
    "baseline-reseeded": worker_baseline_reseeded,
    "floor": worker_floor,
}


def run_worker(system: str, config: dict, scratch: str) -> dict:
    """Run one system in a fresh interpreter; add its wall time and peak RSS."""
    output_dir = tempfile.mkdtemp(prefix=f"{system}-", dir=scratch)
    config_path = os.path.join(output_dir, "..", f"{os.path.basename(output_dir)}.json")
    with open(config_path, "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        HF_DATASETS_CACHE=os.path.join(output_dir, "datasets-cache"),
    )
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            system,
            "--config",
            config_path,
            "--output_dir",
            output_dir,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{system} failed (exit {process.returncode}):\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["peak_rss_mb"] = result.pop("_peak_rss_mb", None)
    result["peak_gpu_mb"] = result.pop("_peak_gpu_mb", None)
    return result


# --------------------------------------------------------------------------- the report


ROWS = [
    ("tokenize_s", "tokenization (s)", "lower"),
    ("train_samples_per_s", "train samples/s", "higher"),
    ("train_tokens_per_s", "train tokens/s", "higher"),
    ("eval_samples_per_s", "eval+generate samples/s", "higher"),
    ("predict_samples_per_s", "predict samples/s", "higher"),
    ("wall_s", "end-to-end wall (s)", "lower"),
    ("peak_rss_mb", "peak RSS (MB)", "lower"),
    ("peak_gpu_mb", "peak GPU memory (MB)", "lower"),
    ("mfu_percent", "model FLOPs util. (%)", "higher"),
    ("train_loss", "train loss (run mean)", None),
    ("eval_rouge1", "ROUGE-1", None),
    ("eval_rougeL", "ROUGE-L", None),
]


RUN_FIGURES = [
    ("train_samples_per_s", "train samples/s"),
    ("eval_samples_per_s", "eval+generate samples/s"),
    ("mfu_percent", "MFU %"),
    ("peak_gpu_mb", "peak GPU MB"),
]


def median_of(runs: list[dict], key: str):
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value) -> str:
    if value is None:
        return "-"
    if 0 < abs(value) < 0.1:  # a training loss near zero: enough digits to compare
        return f"{value:.5f}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3f}"


def print_table(title: str, medians: dict, systems: list[str], rows: list = ROWS) -> None:
    print(f"\n== {title} ==")
    width = max(17, *(len(s) + 2 for s in systems))
    header = f"{'':<26}" + "".join(f"{s:>{width}}" for s in systems)
    ratios = [s for s in systems if s != "baseline"]
    header += "".join(
        f"{s.replace('seqtune-', '').replace('baseline-', '') + '/base':>{max(14, len(s))}}" for s in ratios
    )
    print(header)
    for key, label, better in rows:
        if all(medians[s].get(key) is None for s in systems):
            continue  # e.g. GPU memory on a CPU machine
        line = f"{label:<26}" + "".join(f"{fmt(medians[s].get(key)):>{width}}" for s in systems)
        base = medians.get("baseline", {}).get(key)
        for system in ratios:
            value = medians[system].get(key)
            if better is None or value is None or base in (None, 0):
                digits = 5 if base is not None and 0 < abs(base) < 0.1 else 3
                ratio = f"{value - base:+.{digits}f}" if None not in (value, base) else "-"
            elif better == "higher":
                ratio = f"{value / base:.2f}x"
            else:
                ratio = f"{base / value:.2f}x" if value else "-"
            line += f"{ratio:>{max(14, len(system))}}"
        print(line)
    print(
        "(ratios: speed-up where higher is better or time/memory saved where lower is better; "
        "difference for loss and ROUGE)"
    )


QUALITY_ROWS = [
    ("final_train_loss", "train loss (last 10%)", None),
    ("train_loss", "train loss (run mean)", None),
    ("eval_loss", "eval loss", None),
    ("eval_rouge1", "ROUGE-1", None),
    ("eval_rouge2", "ROUGE-2", None),
    ("eval_rougeL", "ROUGE-L", None),
    ("eval_gen_len", "generated length", None),
    ("train_samples_per_s", "train samples/s", "higher"),
    ("eval_samples_per_s", "eval+generate samples/s", "higher"),
    ("wall_s", "end-to-end wall (s)", "lower"),
]


def quality_learning_rate(args) -> float:
    if args.quality_learning_rate is not None:
        return args.quality_learning_rate
    return QUALITY_LEARNING_RATES.get(args.quality_size, args.learning_rate)


def quality_check(args, scratch: str, systems: list[str]) -> None:
    """Train each system long enough to learn the task, once per seed (for one seed the result is
    deterministic: a repeat gives the same numbers), and compare loss and ROUGE with the baseline's.

    The speed runs stop after a few dozen steps, where every model still writes one template
    summary for every input; their ROUGE then depends on which template words came out and swings
    with any change of batch order. Here the models have learned to copy the story out of the
    document, so ROUGE measures what the pipelines differ in. The seed sets the batch order and
    dropout (the initial weights are the same): with several seeds the medians are compared and the
    baseline's spread across seeds is the noise any comparison has to beat."""
    world = build_world(
        os.path.join(scratch, f"quality-{args.quality_size}"),
        args.quality_size,
        args.train_examples,
        args.quality_eval_examples,
        args.test_examples,
        seed=0,
    )
    config = dict(
        world,
        size=args.quality_size,
        steps=args.quality_steps,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        max_source_length=args.max_source_length,
        max_target_length=args.max_target_length,
        learning_rate=quality_learning_rate(args),
        bf16=args.bf16,
    )
    seeds = args.quality_seeds
    runs = {system: [] for system in systems}
    for seed in seeds:
        for system in systems:
            result = run_worker(system, dict(config, seed=seed), scratch)
            runs[system].append(result)
            print(
                f"  [quality, {args.quality_size}, {args.quality_steps} steps, seed {seed}] {system}: "
                f"wall {result['wall_s']:.1f}s, mean train loss {result['train_loss']:.3f}, "
                f"final train loss {fmt(result.get('final_train_loss'))}, ROUGE-1 {result['eval_rouge1']:.2f}",
                flush=True,
            )
    results = {
        system: {key: median_of(system_runs, key) for key, _, _ in QUALITY_ROWS} for system, system_runs in runs.items()
    }
    runs_label = "one run each" if len(seeds) == 1 else f"medians of seeds {','.join(map(str, seeds))}"
    print_table(
        f"quality: {args.quality_size} model, {args.quality_steps} steps, lr {config['learning_rate']:g}, "
        f"batch {args.batch_size}, "
        f"{args.quality_eval_examples} evaluation examples ({runs_label})",
        results,
        systems,
        QUALITY_ROWS,
    )
    if "baseline" not in results:
        return
    if len(seeds) > 1:
        loss_spread = spread_percent([run["train_loss"] for run in runs["baseline"]])
        rouge_spread = spread([run["eval_rouge1"] for run in runs["baseline"]])
        print(
            f"  noise: the baseline's mean train loss spans {loss_spread:.2f}% "
            f"and its ROUGE-1 {rouge_spread:.2f} points "
            f"across the {len(seeds)} seeds"
        )
    for system in [s for s in systems if s != "baseline"]:
        loss = 100 * abs(results[system]["train_loss"] / results["baseline"]["train_loss"] - 1)
        rouge = abs(results[system]["eval_rouge1"] - results["baseline"]["eval_rouge1"])
        note = "  (noise: the baseline in another order)" if system == "baseline-reseeded" else ""
        final, base_final = results[system]["final_train_loss"], results["baseline"]["final_train_loss"]
        if final is not None and base_final:  # the target is on the final loss; the run mean where none was logged
            verdict = (
                f"final train loss within {100 * abs(final / base_final - 1):.2f}% of the baseline's "
                f"(target 2%; run mean: {loss:.2f}%)"
            )
        else:
            verdict = f"mean train loss within {loss:.2f}% of the baseline's (target 2%)"
        print(f"  {system}: {verdict}, ROUGE-1 within {rouge:.2f} points (target 0.3){note}")


def seed_list(text: str) -> list[int]:
    """--quality_seeds: comma-separated integers, at least one."""
    try:
        seeds = [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}")
    return seeds


def spread(values: list[float]) -> float:
    return max(values) - min(values)


def spread_percent(values: list[float]) -> float:
    return 100 * spread(values) / statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        default="tiny,small",
        help="Model sizes to run: tiny, small, t5-small (the shapes of Google's t5-small, 60M parameters: for a GPU).",
    )
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision in every system (GPU runs).")
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="The accelerator's peak TFLOP/s for model FLOPs utilisation (default: known GPUs' dense "
        "bf16 peak, e.g. 989 for an H100/H200 SXM; none on a CPU).",
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"Systems to compare: {', '.join(SYSTEMS)}, seqtune-trainer-random (the baseline's "
        "random order: isolates what the batch order changes in loss and ROUGE).",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="Runs per system; the median is reported (0: only the quality comparison).",
    )
    parser.add_argument("--train_examples", type=int, default=512)
    parser.add_argument("--eval_examples", type=int, default=64)
    parser.add_argument("--test_examples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--eval_batch_size", type=int, default=16)
    parser.add_argument("--max_source_length", type=int, default=1024)
    parser.add_argument("--max_target_length", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--skip_memory", action="store_true", help="Skip the 10x-test-set prediction memory check.")
    parser.add_argument(
        "--quality_steps",
        type=int,
        default=QUALITY_STEPS,
        help="Training steps of the quality comparison (one run per system and seed, long enough for the models "
        "to learn the task); 0 skips it.",
    )
    parser.add_argument("--quality_size", default=QUALITY_SIZE, help="Model size of the quality comparison.")
    parser.add_argument(
        "--quality_learning_rate",
        type=float,
        default=None,
        help="Learning rate of the quality comparison, the same for every system (default: "
        + ", ".join(f"{rate:g} for {size}" for size, rate in QUALITY_LEARNING_RATES.items())
        + "; --learning_rate for other sizes).",
    )
    parser.add_argument(
        "--quality_systems",
        default="baseline,baseline-reseeded,seqtune-trainer,seqtune-loop",
        help="Systems of the quality comparison; baseline-reseeded (the baseline with the next seed: "
        "only the batch order changes) shows how much loss and ROUGE move with the order alone (with several "
        "--quality_seeds the baseline's spread shows it instead).",
    )
    parser.add_argument(
        "--quality_seeds",
        type=seed_list,
        default=[0],
        help="Comma-separated training seeds of the quality comparison (e.g. 0,1,2): each system runs "
        "once per seed, the medians are compared and the baseline's spread across seeds is printed "
        "as the noise.",
    )
    parser.add_argument(
        "--quality_eval_examples",
        type=int,
        default=256,
        help="Evaluation examples of the quality comparison (more: less sampling noise in ROUGE).",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # inside the subprocess
        import resource

        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
        result = WORKERS[args.worker](config, args.output_dir)
        peaks = [resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        result["_peak_rss_mb"] = max(peaks) / 1024  # kilobytes on Linux
        import torch

        if torch.cuda.is_available():
            result["_peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps(result))
        return

    import platform

    import torch

    systems = [s for s in args.systems.split(",") if s]
    peak_flops = 1e12 * (args.peak_tflops or known_peak_tflops() or 0)
    if torch.cuda.is_available():
        print(
            f"GPU: {torch.cuda.get_device_name()}, peak {peak_flops / 1e12:.0f} TFLOP/s for model FLOPs utilisation"
            f"{'' if args.bf16 else ' (a bf16 peak: pass --bf16, or --peak_tflops for fp32/tf32)'}"
        )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    with tempfile.TemporaryDirectory(prefix="seqtune-bench-") as scratch:
        for size in args.sizes.split(",") if args.repeats else []:
            world = build_world(
                os.path.join(scratch, size), size, args.train_examples, args.eval_examples, args.test_examples, seed=0
            )
            config = dict(
                world,
                size=size,
                steps=args.steps,
                batch_size=args.batch_size,
                eval_batch_size=args.eval_batch_size,
                max_source_length=args.max_source_length,
                max_target_length=args.max_target_length,
                learning_rate=args.learning_rate,
                seed=0,
                bf16=args.bf16,
            )
            mean_tokens, flops_per_example = train_example_costs(config)
            runs = {system: [] for system in systems + ["floor"]}
            for repeat in range(args.repeats):
                for system in systems + ["floor"]:
                    result = run_worker(system, config, scratch)
                    if result.get("train_samples_per_s"):
                        result["train_tokens_per_s"] = result["train_samples_per_s"] * mean_tokens
                        if peak_flops:
                            result["mfu_percent"] = 100 * result["train_samples_per_s"] * flops_per_example / peak_flops
                    runs[system].append(result)
                    # Each run's figures as it ends: an invocation stopped before its table (a time limit) keeps them.
                    figures = "".join(
                        f", {label} {fmt(result.get(key))}" for key, label in RUN_FIGURES if result.get(key) is not None
                    )
                    print(
                        f"  [{size} run {repeat + 1}/{args.repeats}] {system}: wall {result['wall_s']:.1f}s{figures}",
                        flush=True,
                    )
            medians = {system: {key: median_of(results, key) for key, _, _ in ROWS} for system, results in runs.items()}
            print_table(
                f"{size} model, {args.train_examples} train docs of ~100-1500 tokens, {args.steps} steps, "
                f"batch {args.batch_size} (medians of {args.repeats})",
                medians,
                systems,
            )
            floor = median_of(runs["floor"], "step_ms")
            floor_mfu = median_of(runs["floor"], "mfu_percent")
            print(
                f"floor (bare PyTorch fwd/bwd/AdamW on seqtune's batches): {floor:.1f} ms/step, "
                f"{median_of(runs['floor'], 'train_samples_per_s'):.1f} samples/s"
                + (f", model FLOPs utilisation {floor_mfu:.1f}%" if floor_mfu is not None else "")
            )
            if not args.skip_memory:
                memory_check(config, scratch, systems)
        if args.quality_steps:
            quality_check(args, scratch, [s for s in args.quality_systems.split(",") if s])


def train_example_costs(config: dict) -> tuple[float, float]:
    """Mean source+target tokens of a training example (after truncation), for tokens/s, and the
    mean model FLOPs of training on it (`training_flops`), for model FLOPs utilisation."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    model = AutoModelForSeq2SeqLM.from_pretrained(config["model"])
    tokens = flops = 0.0
    count = 0
    with open(config["files"]["train"], encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            source = min(len(tokenizer("summarize: " + row["document"])["input_ids"]), config["max_source_length"])
            target = min(len(tokenizer(text_target=row["summary"])["input_ids"]), config["max_target_length"])
            tokens += source + target
            flops += training_flops(model, source, target)
            count += 1
    return tokens / max(count, 1), flops / max(count, 1)


def training_flops(model, source_tokens: int, target_tokens: int) -> float:
    """Model FLOPs of one training step (forward and backward) on one example, real tokens only.

    The forward pass is 2 FLOPs per weight per token: the encoder's weight matrices and the decoder's
    cross-attention keys and values see the source tokens, the rest of the decoder and the output
    projection the target tokens; plus the attention scores and weighted sums: 2 x 2 x query tokens
    x key tokens x inner width per layer, self and cross. The backward pass is twice the forward.
    (Checked against torch's FLOP counter in tests/test_benchmark.py.)"""
    config = model.config
    weights = {"encoder": 0, "decoder": 0, "cross_kv": 0}
    for name, parameter in model.named_parameters():
        part = next((p for p in name.split(".")[:2] if p in weights), None)
        if part and parameter.dim() >= 2 and "embed" not in name and "relative_attention_bias" not in name:
            if part == "decoder" and any(
                k in name
                for k in ("EncDecAttention.k.", "EncDecAttention.v.", "encoder_attn.k_proj.", "encoder_attn.v_proj.")
            ):
                part = "cross_kv"
            weights[part] += parameter.numel()
    width = config.d_model
    inner = getattr(config, "num_heads", 0) * getattr(config, "d_kv", 0) or width
    encoder_layers = getattr(config, "num_layers", None) or config.encoder_layers
    decoder_layers = getattr(config, "num_decoder_layers", None) or config.decoder_layers
    source, target = source_tokens, target_tokens
    forward = (
        2 * (weights["encoder"] + weights["cross_kv"]) * source
        + 2 * (weights["decoder"] + config.vocab_size * width) * target
        + 4 * inner * (encoder_layers * source * source + decoder_layers * (target * target + target * source))
    )
    return 3.0 * forward


def known_peak_tflops() -> float | None:
    """Dense bf16 peak of the GPU in this machine, when it is one we know."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for marker, tflops in (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L4", 121.0), ("A10", 125.0)):
        if marker in name:
            return tflops
    return None


def memory_check(config: dict, scratch: str, systems: list[str]) -> None:
    """Peak RSS of prediction on N and on 10N test examples: flat memory means streamed predictions."""
    print("\n== prediction memory: peak RSS, test set x1 vs x10 ==")
    for system in [s for s in systems if s != "seqtune-loop"]:
        peaks = []
        for key in ("test", "test_10x"):
            result = run_worker(system, dict(config, predict_only=True, test_key=key), scratch)
            peaks.append(result["peak_rss_mb"])
        print(
            f"  {system:<17} x1 {peaks[0]:8.1f} MB   x10 {peaks[1]:8.1f} MB   "
            f"growth {100 * (peaks[1] / peaks[0] - 1):+.1f}%"
        )


if __name__ == "__main__":
    main()
