"""Mixed precision and the non-finite-loss guard (seqtune.precision), for both scripts.

--bf16 trains on the CPU; --fp16 without a GPU is refused before anything is written;
a NaN loss stops training at that step with the cause, keeping the last good checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re

import pytest
import torch
from conftest import LOOP_SCRIPT, TRAINER_SCRIPT, UNKNOWN_WORD, quick_args, run_script, synthetic_corpus, write_jsonl

from seqtune.arguments import check_mixed_precision
from seqtune.checkpoints import list_checkpoints
from seqtune.errors import UserError
from seqtune.precision import (
    NonFiniteLossError,
    check_loss_is_finite,
    non_finite_loss_message,
    warn_fp16_overflow,
)
from seqtune.recipes import accelerate_loop as train_loop
from seqtune.recipes import trainer as train_trainer
from seqtune.runtime import accelerator_available

no_gpu = pytest.mark.skipif(accelerator_available(), reason="this machine has a GPU: --fp16 is allowed there")
FP16_REFUSED = (
    "seqtune: error: --fp16 needs a CUDA GPU and none is visible. "
    "Fix: use --bf16 for mixed precision on a CPU, or drop --fp16."
)


def trainer_args(model, files, output_dir, steps: int, *extra: str) -> list[str]:
    return quick_args(
        model,
        files,
        output_dir,
        "--do_train",
        "--max_steps",
        str(steps),
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
        *extra,
    )


def loop_args(model, files, output_dir, steps: int, *extra: str) -> list[str]:
    return quick_args(model, files, output_dir, "--max_train_steps", str(steps), "--logging_steps", "1", *extra)


# script name -> (main, arguments for a short training run, flags for a checkpoint every step)
SCRIPTS = {
    "trainer": (train_trainer.main, trainer_args, ("--save_steps", "1")),
    "no_trainer": (train_loop.main, loop_args, ("--checkpointing_steps", "1")),
}


def run_main(main, argv):
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def logged_losses(output_dir) -> list[float]:
    with open(os.path.join(output_dir, "log_history.jsonl"), encoding="utf-8") as handle:
        events = [json.loads(line) for line in handle]
    return [event["loss"] for event in events if event.get("event") == "train"]


# --------------------------------------------------------------------------- fp16 / bf16 flags


@no_gpu
def test_fp16_without_gpu_is_refused_before_anything_is_written(t5_model, corpus_files, tmp_path):
    output_dir = tmp_path / "run"
    result = run_script(TRAINER_SCRIPT, quick_args(t5_model, corpus_files, output_dir, "--do_train", "--fp16"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("seqtune: error:")] == [FP16_REFUSED]
    assert not output_dir.exists()


@no_gpu
def test_fp16_without_gpu_is_refused_by_the_no_trainer_script_too(t5_model, corpus_files, tmp_path, capsys):
    output_dir = tmp_path / "run"
    assert run_main(train_loop.main, loop_args(t5_model, corpus_files, output_dir, 2, "--fp16")) == 2
    assert capsys.readouterr().err.strip() == FP16_REFUSED
    assert not output_dir.exists()


def test_precision_flags_checked_together():
    with pytest.raises(UserError, match="--fp16 and --bf16 were both given"):
        check_mixed_precision(fp16=True, bf16=True)
    with pytest.raises(UserError, match="--use_cpu was given.*--bf16"):
        check_mixed_precision(fp16=True, bf16=False, use_cpu=True)
    check_mixed_precision(fp16=False, bf16=True, use_cpu=True)  # bf16 runs on CPUs
    check_mixed_precision(fp16=False, bf16=False)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_bf16_trains_on_cpu(script, t5_model, corpus_files, tmp_path):
    """bf16 autocast really runs (its losses differ from fp32 at bf16's precision) and trains."""
    main, arguments, _ = SCRIPTS[script]
    runs = {}
    for name, extra in (("fp32", ()), ("bf16", ("--bf16",))):
        output_dir = tmp_path / name
        args = arguments(t5_model, corpus_files, output_dir, 3, *extra)
        if script == "trainer":
            assert isinstance(run_main(main, args), dict)
        else:  # Accelerate keeps one precision per process: a process per run
            result = run_script(LOOP_SCRIPT, args)
            assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = logged_losses(output_dir)
        assert read_json(output_dir / "seqtune_run.json")["status"] == "finished"
    assert read_json(tmp_path / "bf16" / "seqtune_args.json")["bf16"] is True
    assert len(runs["bf16"]) == 3 and all(torch.isfinite(torch.tensor(runs["bf16"])))
    assert runs["bf16"] != runs["fp32"]  # mixed precision was applied, not silently ignored
    assert runs["bf16"] == pytest.approx(runs["fp32"], rel=0.02)  # ... and it trains the same model


def test_fp16_with_t5_warns_up_front(caplog):
    with caplog.at_level(logging.WARNING, logger="seqtune.precision"):
        assert warn_fp16_overflow("t5", "fp16") is True
        assert warn_fp16_overflow("mt5", "fp16") is True
        assert warn_fp16_overflow("bart", "fp16") is False
        assert warn_fp16_overflow("t5", "bf16") is False
        assert warn_fp16_overflow("t5", "no") is False
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "overflow in fp16" in warnings[0] and "--bf16" in warnings[0]


# --------------------------------------------------------------------------- non-finite loss


def test_non_finite_message_names_step_and_cause():
    message = non_finite_loss_message(
        7,
        float("nan"),
        mixed_precision="fp16",
        model_type="t5",
        learning_rate=3e-4,
        last_checkpoint="/out/checkpoint-6",
    )
    assert message.startswith("the training loss is nan at step 7; training stopped there.")
    assert "t5 (T5-family) models overflow in fp16" in message
    assert "--bf16" in message and "fp32" in message
    assert "/out/checkpoint-6, is kept" in message
    message = non_finite_loss_message(
        2, float("inf"), mixed_precision="no", model_type="bart", learning_rate=5.0, last_checkpoint=None
    )
    assert "inf at step 2" in message and "the learning rate (5) is too high" in message
    assert "No checkpoint was written before it." in message


def test_loss_guard_passes_finite_and_stops_non_finite(tmp_path):
    guard = dict(mixed_precision="bf16", model_type="t5", learning_rate=1e-3, output_dir=str(tmp_path))
    check_loss_is_finite(torch.tensor(2.5), 1, **guard)
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(NonFiniteLossError, match="at step 4"):
            check_loss_is_finite(torch.tensor(bad), 4, **guard)
    assert issubclass(NonFiniteLossError, UserError)  # one message, exit code 2, no traceback


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_non_finite_loss_stops_at_once_and_keeps_the_last_good_checkpoint(
    script, trap_model, corpus_files, tmp_path, capsys
):
    """Example 13 makes the trap model's loss NaN: training stops at the step that trains on it
    (step 4 in the Trainer's file order, a seeded step in the no_trainer script's shuffled one)."""
    main, arguments, checkpoint_every_step = SCRIPTS[script]
    rows = synthetic_corpus(64, seed=3)
    rows[13] = dict(rows[13], document=f"{UNKNOWN_WORD} {rows[13]['document']}")
    files = dict(corpus_files, train=write_jsonl(str(tmp_path / "train.jsonl"), rows))
    output_dir = tmp_path / "run"
    extra = ["--per_device_train_batch_size", "4", "--save_total_limit", "2", *checkpoint_every_step]
    if script == "trainer":
        extra += ["--train_sampling_strategy", "sequential"]
    args = arguments(trap_model, files, output_dir, 10, *extra)
    assert run_main(main, args) == 2

    stderr = capsys.readouterr().err
    found = re.search(r"seqtune: error: the training loss is nan at step (\d+); training stopped there\.", stderr)
    assert found, stderr[-2000:]
    step = int(found.group(1))
    if script == "trainer":
        assert step == 4  # batches of 4 in file order: example 13 is in the 4th
    assert 3 <= step <= 10
    assert (
        "Likely cause: the learning rate (0.001) is too high for this model, or an example makes it diverge" in stderr
    )
    prefix = "checkpoint-" if script == "trainer" else "step_"  # the no_trainer script's names: step_N
    assert f"{output_dir / f'{prefix}{step - 1}'}, is kept" in stderr
    kept = [os.path.basename(c) for c in list_checkpoints(str(output_dir))]
    assert kept == [f"{prefix}{step - 2}", f"{prefix}{step - 1}"]  # nothing written at or after the bad step
    assert not os.path.exists(output_dir / "model.safetensors")  # no final model from a diverged run
    assert all(torch.isfinite(torch.tensor(logged_losses(output_dir))))

    # Fixed data, the same command: it resumes from the kept checkpoint and finishes.
    write_jsonl(files["train"], synthetic_corpus(64, seed=3))
    assert isinstance(run_main(main, args), dict)
    with open(output_dir / "log_history.jsonl", encoding="utf-8") as handle:
        starts = [json.loads(line)["step"] for line in handle if '"start"' in line]
    assert starts == [0, step - 1]  # the second run began at the kept checkpoint
    assert read_json(output_dir / "seqtune_run.json")["status"] == "finished"
    assert os.path.exists(output_dir / "model.safetensors")
