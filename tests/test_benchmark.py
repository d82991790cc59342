"""benchmarks/bench_summarization.py (issue 6): one invocation runs the baseline pipeline and both
seqtune scripts, each in its own process, and prints every figure with its ratio to the baseline.

Timings are not asserted (they belong to the benchmark, not to a test); what is checked is that
the figures exist, that they agree with what the runs wrote, and that the comparison is fair:
with the baseline's random batch order, seqtune computes exactly the baseline's loss and ROUGE.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.timeout(600)

BENCH = f"{REPO}/benchmarks/bench_summarization.py"


def table_row(output: str, label: str) -> list[str]:
    """The cells of the first table row that starts with `label`."""
    for line in output.splitlines():
        if line.startswith(label + " ") or line.startswith(label + "\t"):
            return line[len(label) :].split()
    raise AssertionError(f"no row {label!r} in:\n{output}")


def test_benchmark_prints_figures_ratios_floor_memory_and_quality(tmp_path):
    command = [
        sys.executable,
        BENCH,
        "--sizes",
        "tiny",
        "--repeats",
        "1",
        "--systems",
        "baseline,seqtune-trainer,seqtune-loop,seqtune-trainer-random",
        "--train_examples",
        "24",
        "--eval_examples",
        "8",
        "--test_examples",
        "4",
        "--steps",
        "3",
        "--batch_size",
        "4",
        "--eval_batch_size",
        "8",
        "--max_source_length",
        "256",
        "--max_target_length",
        "16",
        "--quality_steps",
        "10",
        "--quality_size",
        "tiny",
        "--quality_eval_examples",
        "8",
        "--quality_seeds",
        "0,1",
        "--quality_learning_rate",
        "2e-3",
        "--quality_systems",
        "baseline,baseline-reseeded,seqtune-trainer",
        "--peak_tflops",
        "1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=580, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout

    assert re.search(
        r"\[tiny run 1/1\] baseline: wall [\d.]+s, train samples/s [\d,.]+, eval\+generate samples/s "
        r"[\d,.]+, MFU % [\d,.]+",
        out,
    ), out
    # Every figure, for every system, then one ratio per seqtune system.
    for label in [
        "train samples/s",
        "eval+generate samples/s",
        "predict samples/s",
        "end-to-end wall (s)",
        "tokenization (s)",
        "train tokens/s",
        "peak RSS (MB)",
        "model FLOPs util. (%)",
    ]:
        cells = table_row(out, label)
        assert len(cells) == 4 + 3, (label, cells)
        assert all(re.fullmatch(r"[\d,.]+x?", cell) for cell in cells), (label, cells)
        assert all(float(cell.replace(",", "")) > 0 for cell in cells[:4]), (label, cells)
        assert all(cell.endswith("x") for cell in cells[4:]), (label, cells)

    # Ratios are computed from the figures printed beside them.
    speed = [float(c.replace(",", "")) for c in table_row(out, "train samples/s")[:4]]
    ratio = float(table_row(out, "train samples/s")[4].rstrip("x"))
    assert ratio == pytest.approx(speed[1] / speed[0], abs=0.01)
    # Utilisation is proportional to samples/s (the same model FLOPs per example for every system).
    mfu = [float(c) for c in table_row(out, "model FLOPs util. (%)")[:4]]
    assert mfu[1] / mfu[0] == pytest.approx(speed[1] / speed[0], rel=0.02)

    # The baseline's random order: exactly the baseline's computation, so the same loss and ROUGE.
    loss = table_row(out, "train loss (run mean)")
    assert loss[3] == loss[0] and loss[6] == "+0.000", loss
    rouge = table_row(out, "ROUGE-1")
    assert rouge[3] == rouge[0], rouge
    # The two seqtune scripts train on the same batches: the same loss.
    assert float(loss[1]) == pytest.approx(float(loss[2]), abs=2e-3), loss

    assert re.search(r"floor \(bare PyTorch .*\): [\d.]+ ms/step, [\d.]+ samples/s", out), out
    for system in ["baseline", "seqtune-trainer", "seqtune-trainer-random"]:
        assert re.search(rf"  {system} +x1 +[\d.]+ MB +x10 +[\d.]+ MB +growth [+-][\d.]+%", out), out
    assert re.search(r"== quality: tiny model, 10 steps, lr 0.002, .*\(medians of seeds 0,1\) ==", out), out
    quality = out.split("== quality")[1]
    # The seed reaches the run: the baseline with seed 1 is the reseeded baseline of seed 0 (seed + 1).
    per_seed = {
        (seed, system): figures
        for seed, system, figures in re.findall(
            r"seed (\d)\] (baseline(?:-reseeded)?): wall [\d.]+s, (mean train loss .*)", out
        )
    }
    assert per_seed[("1", "baseline")] == per_seed[("0", "baseline-reseeded")], per_seed
    assert re.search(
        r"seed 0\] seqtune-trainer: wall [\d.]+s, mean train loss [\d.]+, final train loss [\d.]+, "
        r"ROUGE-1 [\d.]+",
        out,
    ), out
    # The table holds the medians of the seeds (two runs: their mean).
    losses = [float(x) for x in re.findall(r"seed \d\] baseline: wall [\d.]+s, mean train loss ([\d.]+)", out)]
    assert float(table_row(quality, "train loss (run mean)")[0]) == pytest.approx(sum(losses) / 2, abs=1.5e-3), quality
    assert re.search(
        r"noise: the baseline's mean train loss spans [\d.]+% and its ROUGE-1 [\d.]+ points across the 2 seeds", out
    ), out
    assert "baseline-reseeded: final train loss within" in out and "(noise: the baseline in another order)" in out
    # Every system logged a loss at step 10, inside the last 10% of the steps: a final loss for each,
    # and the verdict judges the final loss against the target.
    assert all(float(cell) > 0 for cell in table_row(quality, "train loss (last 10%)")[:3]), quality
    assert re.search(
        r"seqtune-trainer: final train loss within [\d.]+% of the baseline's "
        r"\(target 2%; run mean: [\d.]+%\), ROUGE-1 within [\d.]+ points \(target 0.3\)",
        out,
    ), out


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_summarization", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_model_flops_match_torch_flop_counter(kind):
    """The model FLOPs behind utilisation equal what torch counts for a forward and backward pass."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from seqtune.demo import build_tiny_model, build_tokenizer

    bench = load_benchmark()
    model = build_tiny_model(build_tokenizer(), kind=kind, size="small")
    model.set_attn_implementation("eager")  # the counter does not see the CPU's fused attention kernel
    for source, target in [(300, 12), (900, 30)]:
        with FlopCounterMode(display=False) as counter:
            model(
                input_ids=torch.randint(5, 100, (1, source)), labels=torch.randint(5, 100, (1, target))
            ).loss.backward()
        assert bench.training_flops(model, source, target) == pytest.approx(counter.get_total_flops(), rel=1e-6)


def test_t5_small_size_has_the_shapes_of_google_t5_small():
    from seqtune.demo import build_tiny_model, build_tokenizer

    model = build_tiny_model(build_tokenizer(), kind="t5", size="t5-small")
    assert model.num_parameters() == 60_506_624  # google-t5/t5-small
    assert (model.config.d_model, model.config.num_layers, model.config.num_heads, model.config.vocab_size) == (
        512,
        6,
        8,
        32128,
    )


def test_quality_learning_rate_defaults_per_model_size():
    """The small model learns at 3e-4 and not at the tiny one's 1e-3; a size without a measured rate
    falls back to --learning_rate, and --quality_learning_rate overrides every default."""
    bench = load_benchmark()

    def rate(size, override=None):
        return bench.quality_learning_rate(
            argparse.Namespace(quality_size=size, quality_learning_rate=override, learning_rate=5e-5)
        )

    assert (rate("tiny"), rate("small"), rate("base"), rate("small", 1e-4)) == (1e-3, 3e-4, 5e-5, 1e-4)


def test_final_loss_is_the_mean_over_the_last_tenth_of_the_steps():
    bench = load_benchmark()
    logged = [(10, 4.0), (20, 3.0), (90, 2.0), (95, 1.0), (100, 0.5)]
    assert bench.final_loss(logged, 100) == pytest.approx((1.0 + 0.5) / 2)  # steps 95 and 100 (> 90)
    assert bench.final_loss(logged[:3], 100) == 2.0  # nothing logged after step 90: the last value
    assert bench.final_loss([], 100) is None


def test_quality_seeds_are_integers_or_a_clear_usage_error():
    bench = load_benchmark()
    assert bench.seed_list("0, 1,2") == [0, 1, 2]
    for bad in ["0,x", "", ","]:
        with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
            bench.seed_list(bad)


def test_gpu_bench_script_runs_both_parts_in_bf16(tmp_path):
    """benchmarks/gpu_bench.sh, the one command for a GPU machine, on this CPU with the tiny model: both
    parts run in bf16 (the baseline's Trainer too, which refuses bf16 on a CPU unless told use_cpu) and
    write their tables to $OUT."""
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        OUT=str(tmp_path / "out"),
        WHEELS=str(tmp_path / "no-wheels"),
        SIZE="tiny",
        SPEED_STEPS="2",
        REPEATS="1",
        QUALITY_STEPS="2",
        QUALITY_SYSTEMS="baseline,seqtune-loop",
        BENCH_ARGS="--train_examples 16 --eval_examples 4 --test_examples 4 --quality_eval_examples 4 "
        "--max_source_length 128 --max_target_length 8",
    )
    result = subprocess.run(
        ["bash", f"{REPO}/benchmarks/gpu_bench.sh", "run"],
        capture_output=True,
        text=True,
        timeout=580,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "gpu_bench: speed exit 0, quality exit 0" in result.stdout
    speed = (tmp_path / "out" / "speed.txt").read_text()
    assert "== tiny model, 16 train docs of ~100-1500 tokens, 2 steps, batch 32 (medians of 1) ==" in speed, speed
    assert len(table_row(speed, "train samples/s")) == 3 + 2, speed
    assert "floor (bare PyTorch" in speed and "== quality" not in speed and "prediction memory" not in speed
    # Each run's figures are printed as it ends (kept when a time limit stops the table).
    assert re.search(
        r"\[tiny run 1/1\] seqtune-trainer: wall [\d.]+s, train samples/s [\d,.]+, "
        r"eval\+generate samples/s [\d,.]+",
        speed,
    ), speed
    quality = (tmp_path / "out" / "quality.txt").read_text()
    assert re.search(
        r"== quality: tiny model, 2 steps, lr 0.001, batch 32, 4 evaluation examples \(one run each\) ==", quality
    ), quality
    assert len(table_row(quality, "ROUGE-1")) == 2 + 1, quality


def test_table_keeps_the_digits_of_a_loss_near_zero(capsys):
    """A memorised training set ends with a loss near 0.01: three decimals would hide a 10% difference."""
    bench = load_benchmark()
    assert (bench.fmt(0.00954), bench.fmt(0.555), bench.fmt(1234.5), bench.fmt(0.0), bench.fmt(None)) == (
        "0.00954",
        "0.555",
        "1,234.5",
        "0.000",
        "-",
    )
    medians = {
        "baseline": {"final_train_loss": 0.01036, "eval_rouge1": 93.4},
        "seqtune-loop": {"final_train_loss": 0.00912, "eval_rouge1": 93.43},
    }
    bench.print_table(
        "t",
        medians,
        ["baseline", "seqtune-loop"],
        rows=[("final_train_loss", "loss", None), ("eval_rouge1", "ROUGE-1", None)],
    )
    out = capsys.readouterr().out
    assert table_row(out, "loss") == ["0.01036", "0.00912", "-0.00124"], out
    assert table_row(out, "ROUGE-1") == ["93.400", "93.430", "+0.030"], out


def test_gpu_bench_script_says_what_is_missing_and_rejects_unknown_commands(tmp_path):
    """A Python without seqtune's requirements (here: site-packages switched off) stops the run at once with
    one line that says how to get them; an unknown subcommand is a usage error."""
    bare_python = tmp_path / "python"
    bare_python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S -I "$@"\n')
    bare_python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(bare_python), OUT=str(tmp_path / "out"), WHEELS=str(tmp_path / "no-wheels"))
    result = subprocess.run(
        ["bash", f"{REPO}/benchmarks/gpu_bench.sh", "run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "gpu_bench: " + str(bare_python) + " cannot import a requirement" in result.stderr, result.stderr
    assert "benchmarks/gpu_bench.sh wheels" in result.stderr and "speed" not in result.stdout
    assert not (tmp_path / "out" / "speed.txt").exists()

    result = subprocess.run(
        ["bash", f"{REPO}/benchmarks/gpu_bench.sh", "bench"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 2 and "usage: benchmarks/gpu_bench.sh [wheels|run]" in result.stderr, result.stderr
