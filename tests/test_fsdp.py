"""FSDP (PyTorch's FSDP2, applied by seqtune) in the Accelerate script, with real torchrun processes on the
CPU (gloo): sharded weights, DDP's result, exact resume from DCP checkpoints, an ordinary final model."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import LOOP_SCRIPT, TRAINER_SCRIPT, assert_summarizes, free_port, quick_args, run_script, torchrun

from seqtune.arguments import DataArguments, LoopArguments, ModelArguments, parse_arguments
from seqtune.checkpoints import MANIFEST_NAME, incomplete_reason, list_checkpoints
from seqtune.errors import UserError
from seqtune.sharding import loop_fsdp

DDP_TOLERANCE = 1e-5  # FSDP vs DDP, largest weight difference after 6 steps (measured: 1.3e-6 after 4)
STEPS = ["--per_device_train_batch_size", "4", "--lr_scheduler_type", "constant", "--logging_steps", "1"]


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-5000:]}"


def weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(str(folder), "model.safetensors"))


def largest_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[name].double() - b[name].double()).abs().max().item() for name in a)


def logged_losses(output_dir) -> dict[int, float]:
    with open(os.path.join(str(output_dir), "log_history.jsonl"), encoding="utf-8") as handle:
        events = [json.loads(line) for line in handle]
    return {e["step"]: e["loss"] for e in events if e.get("event") == "train" and "loss" in e}


def loop_args(t5_model, corpus_files, out, steps: int, *extra) -> list[str]:
    return quick_args(t5_model, corpus_files, out, *STEPS, "--max_train_steps", str(steps), *extra)


@pytest.fixture(scope="module")
def fsdp_six_steps(t5_model, corpus_files, tmp_path_factory):
    """An uninterrupted FSDP run of 6 steps on 2 processes, a checkpoint every 2; (output dir, its stderr)."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    args = loop_args(t5_model, corpus_files, out, 6, "--fsdp", "--checkpointing_steps", "2")
    result = run_script(LOOP_SCRIPT, args, launcher=torchrun(2))
    assert_ok(result)
    return out, result.stderr


@pytest.fixture(scope="module")
def ddp_six_steps(t5_model, corpus_files, tmp_path_factory):
    """The same run with DDP (no --fsdp)."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    assert_ok(run_script(LOOP_SCRIPT, loop_args(t5_model, corpus_files, out, 6), launcher=torchrun(2)))
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_shards_the_weights_and_trains_as_ddp(fsdp_six_steps, ddp_six_steps):
    out, stderr = fsdp_six_steps
    found = re.search(r"holding ([\d,]+) \+ ([\d,]+) of its ([\d,]+) weights", stderr)
    assert found, stderr[-3000:]
    first, second, total = (int(number.replace(",", "")) for number in found.groups())
    assert max(first, second) < 0.55 * total and first + second >= total  # about half of every weight each
    ddp = ddp_six_steps
    assert largest_difference(weights(ddp), weights(out)) <= DDP_TOLERANCE  # same names: tied weights once
    assert logged_losses(out) == pytest.approx(logged_losses(ddp), abs=1e-5)
    # DCP's shards are published as every checkpoint is: both processes' files in the manifest.
    found = list_checkpoints(str(out))
    assert [os.path.basename(c) for c in found] == ["step_2", "step_4", "step_6"]
    with open(os.path.join(found[-1], MANIFEST_NAME), encoding="utf-8") as handle:
        files = json.load(handle)["files"]
    assert {"fsdp/.metadata", "fsdp/__0_0.distcp", "fsdp/__1_0.distcp"} <= set(files)
    assert "model.safetensors" not in files  # the shards only: no process gathered the model for it
    assert incomplete_reason(found[-1]) is None
    assert not any(name.startswith(".seqtune-") for name in os.listdir(out))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_final_model_loads_gives_the_same_loss_and_summarizes(fsdp_six_steps, corpus_files, tmp_path):
    out, _ = fsdp_six_steps
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert json.load(open(out / "config.json"))["architectures"] == ["T5ForConditionalGeneration"]
    with open(corpus_files["validation"], encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle][:8]
    inputs = tokenizer(["summarize: " + r["document"] for r in rows], return_tensors="pt", padding=True)
    labels = tokenizer([r["summary"] for r in rows], return_tensors="pt", padding=True).input_ids
    labels[labels == tokenizer.pad_token_id] = -100
    with torch.no_grad():
        loss = model(**inputs, labels=labels).loss.item()
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert reloaded(**inputs, labels=labels).loss.item() == loss
    results = json.load(open(out / "eval_results.json"))
    assert abs(results["eval_loss"] - loss) < 0.5  # the trained model (the eval set's loss, not a fresh one's)
    assert_summarizes(out, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_resumes_exactly_from_its_sharded_checkpoint(fsdp_six_steps, t5_model, corpus_files, tmp_path):
    """3 steps (a checkpoint at 2), then the same command with 6 under `accelerate launch --use_fsdp`:
    it resumes from step_2's DCP shards and ends on the uninterrupted run's weights, bit for bit."""
    straight, _ = fsdp_six_steps
    out = tmp_path / "run"
    assert_ok(
        run_script(
            LOOP_SCRIPT, loop_args(t5_model, corpus_files, out, 3, "--fsdp", "--checkpointing_steps", "2"), torchrun(2)
        )
    )
    launcher = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--use_fsdp"]
    launcher += ["--num_processes", "2", "--main_process_port", str(free_port())]
    result = run_script(LOOP_SCRIPT, loop_args(t5_model, corpus_files, out, 6, "--checkpointing_steps", "2"), launcher)
    assert_ok(result)
    assert f"Resuming from {out / 'step_2'}" in result.stderr
    assert "accelerate launch --use_fsdp: seqtune shards the model itself" in result.stderr
    assert "holding" in result.stderr  # sharded, not DDP
    assert largest_difference(weights(out), weights(straight)) == 0.0
    assert logged_losses(out) == logged_losses(straight)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_run_resumed_at_its_last_step_evaluates_first(fsdp_six_steps, t5_model, corpus_files, tmp_path):
    """The same command again after the run ended: it resumes at step 6 and only evaluates, so evaluation runs
    the sharded model's first forward (FSDP2 must still take the whole model as its root)."""
    out = tmp_path / "run"
    shutil.copytree(fsdp_six_steps[0], out)
    result = run_script(LOOP_SCRIPT, loop_args(t5_model, corpus_files, out, 6, "--fsdp"), torchrun(2))
    assert_ok(result)
    assert f"Resuming from {out / 'step_6'}" in result.stderr
    assert largest_difference(weights(out), weights(fsdp_six_steps[0])) == 0.0
    assert json.load(open(out / "eval_results.json"))["eval_loss"] == pytest.approx(
        json.load(open(fsdp_six_steps[0] / "eval_results.json"))["eval_loss"], abs=1e-6
    )


ELASTIC_TOLERANCE = 1e-5  # resumed on another number of processes vs uninterrupted (measured: 2.4e-7)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sharding", ["fsdp", "ddp"])
def test_resumed_on_another_number_of_processes_continues_the_run(
    sharding, fsdp_six_steps, ddp_six_steps, t5_model, corpus_files, tmp_path
):
    """Elastic resume with --global_batch_size 8 (4 per process): FSDP checkpointed on 2 processes resumes on
    1 (plain python: accumulation 2, DCP resharded), DDP checkpointed on 1 resumes on 2; both continue the
    uninterrupted 2-process run's loss curve and end on its weights within floating-point tolerance."""
    straight = fsdp_six_steps[0] if sharding == "fsdp" else ddp_six_steps
    first, then = (torchrun(2), None) if sharding == "fsdp" else (None, torchrun(2))
    out = tmp_path / "run"
    flags = ["--global_batch_size", "8", "--checkpointing_steps", "2"] + (["--fsdp"] if sharding == "fsdp" else [])
    assert_ok(run_script(LOOP_SCRIPT, loop_args(t5_model, corpus_files, out, 3, *flags), launcher=first))
    result = run_script(LOOP_SCRIPT, loop_args(t5_model, corpus_files, out, 6, *flags), launcher=then)
    assert_ok(result)
    before, after = (2, 1) if sharding == "fsdp" else (1, 2)
    if after == 1:  # accumulation 1 (the default) on 2 processes: nothing to say
        assert "--global_batch_size 8 on 1 process(es) of 4 examples: gradient accumulation set to 2" in result.stderr
    assert (
        f"written on {before} process(es) with {3 - before} accumulation step(s); this run has {after} and "
        f"{3 - after}: resuming 2 steps into epoch 0" in result.stderr
    ), result.stderr[-3000:]
    assert largest_difference(weights(out), weights(straight)) <= ELASTIC_TOLERANCE
    assert logged_losses(out) == pytest.approx(logged_losses(straight), abs=ELASTIC_TOLERANCE)


def test_global_batch_size_must_divide_evenly(tmp_path):
    from seqtune.batching import apply_global_batch_size

    argv = ["--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "4", "--global_batch_size", "8"]
    args = parse_arguments((ModelArguments, DataArguments, LoopArguments), argv)[2]
    apply_global_batch_size(args, 2)
    assert args.gradient_accumulation_steps == 1
    apply_global_batch_size(args, 1)
    assert args.gradient_accumulation_steps == 2
    with pytest.raises(UserError, match=r"--global_batch_size 8 is not a multiple of .* 4 x 3 process\(es\) = 12"):
        apply_global_batch_size(args, 3)


@pytest.mark.parametrize("script", ["loop", "trainer"])
def test_fsdp_checkpoint_is_not_resumed_without_fsdp(
    script, fsdp_six_steps, trainer_fsdp_six_steps, t5_model, corpus_files, tmp_path
):
    """Resuming FSDP shards without --fsdp stops at once with one message (exit 2), not a traceback."""
    if script == "loop":
        source, path, args, newest = fsdp_six_steps[0], LOOP_SCRIPT, loop_args, "step_6"
    else:
        source, path, args, newest = trainer_fsdp_six_steps[0], TRAINER_SCRIPT, trainer_args, "checkpoint-6"
    out = tmp_path / "run"
    shutil.copytree(source, out)
    result = run_script(path, args(t5_model, corpus_files, out, 8))
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.search(
        rf"{newest} was written with --fsdp, and this run is without it.*Fix: run with --fsdp", result.stderr
    )
    assert "Traceback" not in result.stderr


def test_fsdp_requests_that_cannot_be_honoured_are_refused(tmp_path, monkeypatch):
    def args(*extra):
        argv = ["--model_name_or_path", "m", "--output_dir", str(tmp_path / "out"), *extra]
        return parse_arguments((ModelArguments, DataArguments, LoopArguments), argv)[2]

    with pytest.raises(UserError, match=r"--fsdp and DeepSpeed both shard the model: choose one"):
        loop_fsdp(args("--fsdp", "--deepspeed", '{"zero_optimization": {"stage": 2}}'))
    with pytest.raises(UserError, match=r"--fsdp does not run with --torch_compile"):
        loop_fsdp(args("--fsdp", "--torch_compile"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --use_fsdp: seqtune's FSDP2, not its plugin
    assert loop_fsdp(args()) is True
    assert "ACCELERATE_USE_FSDP" not in os.environ
    assert loop_fsdp(args()) is False
    # accelerate launch's settings seqtune's FSDP2 does not do stop the run, not silently dropped
    for name, value, said in [
        ("FSDP_OFFLOAD_PARAMS", "true", "--fsdp_offload_params true"),
        ("FSDP_SHARDING_STRATEGY", "SHARD_GRAD_OP", "--fsdp_sharding_strategy SHARD_GRAD_OP"),
        ("FSDP_RESHARD_AFTER_FORWARD", "false", "--fsdp_reshard_after_forward false"),
    ]:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
        monkeypatch.setenv(name, value)
        with pytest.raises(UserError, match=f"accelerate launch --use_fsdp asks for {said}.*Fix: drop it"):
            loop_fsdp(args())
        monkeypatch.delenv(name)


def test_the_torture_checker_reads_fsdp_shards_and_sees_a_torn_one(fsdp_six_steps, tmp_path):
    """scripts/torture.py --fsdp checks DCP checkpoints by reading every shard back: a truncated one fails."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("torture", os.path.join(REPO, "scripts", "torture.py"))
    torture = importlib.util.module_from_spec(spec)
    sys.modules["torture"] = torture  # its dataclasses look their module up
    spec.loader.exec_module(torture)
    folder = tmp_path / "step_6"
    shutil.copytree(fsdp_six_steps[0] / "step_6", folder)
    assert torture.checkpoint_problems(str(folder), 6) == []
    shard = folder / "fsdp" / "__1_0.distcp"
    size = os.path.getsize(shard)
    with open(shard, "r+b") as handle:
        handle.truncate(size // 2)
    problems = torture.checkpoint_problems(str(folder), 6)
    assert any("__1_0.distcp has" in p for p in problems) and any("fsdp does not load" in p for p in problems), problems


# --------------------------------------------------------------------------- the Trainer script's --fsdp on CPUs
# transformers and accelerate would train it with plain DDP here: seqtune shards the model itself (FSDP2) and the
# Trainer trains, checkpoints (DCP shards) and saves it (seqtune.fsdp_trainer).

TRAINER_FSDP = ["--fsdp", "full_shard auto_wrap"]


def trainer_args(t5_model, corpus_files, out, steps: int, *extra) -> list[str]:
    flags = ["--do_train", "--do_eval", "--do_predict", "--predict_with_generate", "--max_steps", str(steps)]
    return quick_args(t5_model, corpus_files, out, *STEPS, *flags, "--save_steps", "2", *extra)


# evaluated at every checkpoint (between training steps), the best one loaded at the end
EVALUATE_AND_KEEP_BEST = ["--eval_strategy", "steps", "--eval_steps", "2", "--load_best_model_at_end"]


@pytest.fixture(scope="module")
def trainer_fsdp_six_steps(t5_model, corpus_files, tmp_path_factory):
    """The Trainer script with --fsdp, 6 steps on 2 processes, a checkpoint and an evaluation every 2, the best
    checkpoint loaded at the end; (output dir, its stderr)."""
    out = tmp_path_factory.mktemp("trainer-fsdp") / "run"
    args = trainer_args(t5_model, corpus_files, out, 6, *TRAINER_FSDP, *EVALUATE_AND_KEEP_BEST)
    result = run_script(TRAINER_SCRIPT, args, torchrun(2))
    assert_ok(result)
    return out, result.stderr


@pytest.fixture(scope="module")
def trainer_ddp_six_steps(t5_model, corpus_files, tmp_path_factory):
    """The same Trainer run with DDP (no --fsdp)."""
    out = tmp_path_factory.mktemp("trainer-ddp") / "run"
    args = trainer_args(t5_model, corpus_files, out, 6, *EVALUATE_AND_KEEP_BEST)
    assert_ok(run_script(TRAINER_SCRIPT, args, torchrun(2)))
    return out


def results(out, split: str) -> dict:
    return json.load(open(os.path.join(str(out), f"{split}_results.json")))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trainer_fsdp_shards_on_cpus_and_trains_evaluates_and_predicts_as_ddp(
    trainer_fsdp_six_steps, trainer_ddp_six_steps, tmp_path
):
    out, stderr = trainer_fsdp_six_steps
    assert "seqtune shards the model itself (FSDP2" in stderr
    found = re.search(r"holding ([\d,]+) \+ ([\d,]+) of its ([\d,]+) weights", stderr)
    assert found, stderr[-3000:]
    first, second, total = (int(number.replace(",", "")) for number in found.groups())
    assert max(first, second) < 0.55 * total and first + second >= total
    ddp = trainer_ddp_six_steps
    assert largest_difference(weights(ddp), weights(out)) <= DDP_TOLERANCE
    assert logged_losses(out) == pytest.approx(logged_losses(ddp), abs=1e-5)
    # evaluation and prediction generate with the sharded model (the processes in step), each example once
    for split in ("eval", "predict"):
        mine, theirs = results(out, split), results(ddp, split)
        assert mine[f"{split}_samples"] == theirs[f"{split}_samples"]
        assert mine[f"{split}_loss"] == pytest.approx(theirs[f"{split}_loss"], abs=1e-4)
        assert mine[f"{split}_rouge1"] == pytest.approx(theirs[f"{split}_rouge1"], abs=1e-6)
    assert f"Loading the best model from {out / 'checkpoint-6'}" in stderr  # from its DCP shards
    mine, theirs = (json.load(open(folder / "trainer_state.json"))["log_history"] for folder in (out, ddp))
    evaluations = [(e["step"], e["eval_loss"]) for e in mine if "eval_loss" in e]
    assert [step for step, _ in evaluations] == [2, 4, 6]  # during training, the sharded model between steps
    assert [loss for _, loss in evaluations] == pytest.approx(
        [e["eval_loss"] for e in theirs if "eval_loss" in e], abs=1e-4
    )
    predictions = (out / "generated_predictions.txt").read_text().splitlines()
    assert predictions == (ddp / "generated_predictions.txt").read_text().splitlines() and len(predictions) == 12
    # checkpoints: both processes' DCP shards published in the manifest, no gathered model, the layout recorded
    found = list_checkpoints(str(out))
    assert [os.path.basename(c) for c in found] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    with open(os.path.join(found[-1], MANIFEST_NAME), encoding="utf-8") as handle:
        manifest = json.load(handle)
    assert {"fsdp/.metadata", "fsdp/__0_0.distcp", "fsdp/__1_0.distcp", "scheduler.pt"} <= set(manifest["files"])
    assert "model.safetensors" not in manifest["files"] and "optimizer.pt" not in manifest["files"]
    assert manifest["layout"] == {"processes": 2, "accumulation": 1, "global_batch": 8}
    # the final model: an ordinary folder, saved with the model's own use_cache
    assert json.load(open(out / "config.json"))["use_cache"] is True
    assert_summarizes(out, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sharding", ["fsdp", "ddp"])
def test_trainer_resumed_on_another_number_of_processes_continues_the_run(
    sharding, trainer_fsdp_six_steps, trainer_ddp_six_steps, t5_model, corpus_files, tmp_path
):
    """Elastic resume of the Trainer script with --global_batch_size 8 (4 per process): FSDP checkpointed on 2
    processes resumes on 1 (plain python: accumulation 2, the DCP shards resharded), DDP checkpointed on 1
    resumes on 2; both end on the uninterrupted 2-process run's weights and loss curve."""
    straight = trainer_fsdp_six_steps[0] if sharding == "fsdp" else trainer_ddp_six_steps
    first, then = (torchrun(2), None) if sharding == "fsdp" else (None, torchrun(2))
    extra = ["--global_batch_size", "8"] + (TRAINER_FSDP if sharding == "fsdp" else [])
    out = tmp_path / "run"
    assert_ok(run_script(TRAINER_SCRIPT, trainer_args(t5_model, corpus_files, out, 3, *extra), first))
    result = run_script(TRAINER_SCRIPT, trainer_args(t5_model, corpus_files, out, 6, *extra), then)
    assert_ok(result)
    before, after = (2, 1) if sharding == "fsdp" else (1, 2)
    if after == 1:
        assert "--global_batch_size 8 on 1 process(es) of 4 examples: gradient accumulation set to 2" in result.stderr
    assert (
        f"written on {before} process(es) with {3 - before} accumulation step(s); this run has {after} and "
        f"{3 - after}: resuming at step 3" in result.stderr
    ), result.stderr[-3000:]
    assert largest_difference(weights(out), weights(straight)) <= ELASTIC_TOLERANCE
    assert logged_losses(out) == pytest.approx(logged_losses(straight), abs=ELASTIC_TOLERANCE)


def test_trainer_fsdp_requests_seqtune_cannot_honour_on_cpus_are_refused(tmp_path, monkeypatch):
    """On CPUs the Trainer's --fsdp becomes seqtune's FSDP2 (transformers' own switched off, not silently DDP);
    an option or --fsdp_config setting it does not do stops at start with one message."""
    import torch

    from seqtune.arguments import TrainerArguments

    if torch.cuda.is_available():
        pytest.skip("on GPUs transformers runs the Trainer's --fsdp")

    def args(*extra):
        argv = ["--model_name_or_path", "m", "--output_dir", str(tmp_path / "out"), *extra]
        return parse_arguments((ModelArguments, DataArguments, TrainerArguments), argv)[2]

    for flags in (
        TRAINER_FSDP,
        ["--fsdp", "full_shard"],
        ["--fsdp_config", '{"transformer_layer_cls_to_wrap": "T5Block"}', *TRAINER_FSDP],
    ):
        parsed = args(*flags)
        assert parsed.seqtune_fsdp and not parsed.fsdp and not parsed.fsdp_plugin_args  # transformers' FSDP off
    assert not args().seqtune_fsdp
    with pytest.raises(
        UserError, match=r"--fsdp offload is not done by seqtune's FSDP on CPUs\. Fix: --fsdp \"full_shard"
    ):
        args("--fsdp", "full_shard offload")
    with pytest.raises(UserError, match=r"--fsdp shard_grad_op is not done"):
        args("--fsdp", "shard_grad_op auto_wrap")
    config = tmp_path / "fsdp.json"
    config.write_text(json.dumps({"fsdp_activation_checkpointing": True, "fsdp_version": 2}))
    with pytest.raises(UserError, match=r"--fsdp_config asks for activation_checkpointing: true, not done"):
        args(*TRAINER_FSDP, "--fsdp_config", str(config))
    with pytest.raises(UserError, match=r"--fsdp_config \(inline JSON\) is not valid JSON: .*Fix: correct it"):
        args(*TRAINER_FSDP, "--fsdp_config", '{"version": 2')
    with pytest.raises(UserError, match=r"--fsdp_config .*missing\.json cannot be read as JSON"):
        args(*TRAINER_FSDP, "--fsdp_config", str(tmp_path / "missing.json"))
    with pytest.raises(UserError, match=r"--fsdp and DeepSpeed both shard the model: choose one"):
        args(*TRAINER_FSDP, "--deepspeed", '{"zero_optimization": {"stage": 2}}')
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --use_fsdp run_summarization.py
    assert args().seqtune_fsdp and "ACCELERATE_USE_FSDP" not in os.environ
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    with pytest.raises(UserError, match=r"accelerate launch --use_fsdp asks for --fsdp_offload_params true"):
        args()
