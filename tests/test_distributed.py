"""Distributed training with real torchrun processes on the CPU (gloo), both scripts.

What makes 2 processes x 2 comparable with 1 process x 4 (same seed, same global batch):
- data order: Accelerate gives every process the same seeded permutation and deals out
  consecutive per-process batches, so global batch k holds the same 4 examples as the
  single process's batch k (the default random sampler; no sequential order needed);
- dropout: the tiny models have none, so the forward passes are the same functions;
- gradient averaging: seqtune's loss is the mean over the target tokens of the global
  batch, so DDP's average of the per-process gradients is the single-process gradient
  even when the processes hold different numbers of target tokens (the training targets
  here vary in length on purpose).
What is left is float summation order, hence a small tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import (
    LOOP_SCRIPT,
    TRAINER_SCRIPT,
    UNKNOWN_WORD,
    free_port,
    quick_args,
    run_script,
    synthetic_corpus,
    torchrun,
    write_jsonl,
)

from seqtune.checkpoints import list_checkpoints
from seqtune.runtime import close_process_group

STEPS = 4
LOSS_TOLERANCE = 1e-4  # relative; observed differences are float noise (< 1e-6)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def logged_losses(output_dir) -> dict[int, float]:
    """Step -> training loss, from the run log both scripts write."""
    with open(os.path.join(output_dir, "log_history.jsonl"), encoding="utf-8") as handle:
        events = [json.loads(line) for line in handle]
    return {event["step"]: event["loss"] for event in events if event.get("event") == "train"}


def read_lines(path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    # A rank that left its process group to interpreter exit could abort after finishing (seen in CI).
    assert "terminate called" not in result.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Train/validation/test files: 64 training examples whose summaries vary in length,
    15 validation and 11 test examples (neither divisible by the 2 processes nor by 2 x 4)."""
    folder = tmp_path_factory.mktemp("distributed-data")
    rows = synthetic_corpus(64 + 15 + 11, seed=1)
    train = []
    for index, row in enumerate(rows[:64]):
        words = row["summary"].split()
        train.append({"document": row["document"], "summary": " ".join(words[: 3 + index % 7])})
    return {
        "train": write_jsonl(str(folder / "train.jsonl"), train),
        "train_fixed_length": write_jsonl(str(folder / "train-fixed.jsonl"), rows[:64]),  # every summary 11 tokens
        "validation": write_jsonl(str(folder / "validation.jsonl"), rows[64:79]),
        "test": write_jsonl(str(folder / "test.jsonl"), rows[79:]),
    }


def common_args(model: str, train_file: str, files: dict, output_dir, batch: int) -> list[str]:
    return [
        "--model_name_or_path",
        model,
        "--train_file",
        train_file,
        "--validation_file",
        files["validation"],
        "--test_file",
        files["test"],
        "--output_dir",
        str(output_dir),
        "--max_source_length",
        "96",
        "--max_target_length",
        "24",
        "--val_max_target_length",
        "12",
        "--per_device_train_batch_size",
        str(batch),
        "--per_device_eval_batch_size",
        "4",
        "--learning_rate",
        "1e-4",
        "--logging_steps",
        "1",
        "--seed",
        "0",
    ]


def run_args(model: str, files: dict, output_dir, batch: int, *extra: str) -> list[str]:
    """The Trainer script: STEPS steps, a checkpoint every 2."""
    return common_args(model, files["train"], files, output_dir, batch) + [
        "--max_steps",
        str(STEPS),
        "--save_steps",
        "2",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        *extra,
    ]


EVALUATE = ("--do_train", "--do_eval", "--do_predict", "--predict_with_generate")


@pytest.fixture(scope="module")
def single_process(trap_model, world, tmp_path_factory) -> str:
    """The reference: one process, batch 4."""
    output_dir = tmp_path_factory.mktemp("single") / "run"
    assert_ok(run_script(TRAINER_SCRIPT, run_args(trap_model, world, output_dir, 4, *EVALUATE)))
    return str(output_dir)


def assert_same_losses(output_dir, reference) -> None:
    losses, expected = logged_losses(output_dir), logged_losses(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert sorted(losses) == sorted(expected)
    for step in expected:
        assert losses[step] == pytest.approx(expected[step], rel=LOSS_TOLERANCE), f"step {step}"
    # The same number of examples seen: STEPS global batches of 4 out of 64.
    assert read_json(os.path.join(output_dir, "train_results.json"))["epoch"] == STEPS * 4 / 64


def assert_same_outputs(
    output_dir, reference, eval_loss_tolerance: float, checkpoints=("checkpoint-2", "checkpoint-4")
) -> None:
    """Evaluation and prediction of the 2-process run equal the single process's."""
    # Every one of the 15 evaluation examples counts once (no padded duplicates in ROUGE or the loss).
    evaluation = read_json(os.path.join(output_dir, "eval_results.json"))
    expected = read_json(os.path.join(reference, "eval_results.json"))
    assert evaluation["eval_samples"] == expected["eval_samples"] == 15
    for key in ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_gen_len"):
        assert evaluation[key] == pytest.approx(expected[key], abs=1e-6), key
    assert evaluation["eval_loss"] == pytest.approx(expected["eval_loss"], abs=eval_loss_tolerance)

    # One prediction per test example, in input order: the same lines as the single process.
    predictions = read_lines(os.path.join(output_dir, "generated_predictions.txt"))
    expected_predictions = read_lines(os.path.join(reference, "generated_predictions.txt"))
    assert len(predictions) == 11
    assert len(set(expected_predictions)) > 5  # the trap model's summaries differ from input to input
    assert predictions == expected_predictions

    # Only rank 0 wrote: the same files as the single process, complete checkpoints, no leftovers.
    assert sorted(os.listdir(output_dir)) == sorted(os.listdir(reference))
    assert [os.path.basename(c) for c in list_checkpoints(str(output_dir))] == list(checkpoints)
    assert read_json(os.path.join(output_dir, "seqtune_run.json"))["status"] == "finished"


def test_torchrun_two_processes_train_like_one(trap_model, world, single_process, tmp_path):
    output_dir = tmp_path / "run"
    result = run_script(TRAINER_SCRIPT, run_args(trap_model, world, output_dir, 2, *EVALUATE), launcher=torchrun(2))
    assert_ok(result)

    # Same global batch, same seed: the same training losses step by step.
    assert_same_losses(output_dir, single_process)
    assert_same_outputs(output_dir, single_process, eval_loss_tolerance=1e-4)


def test_two_nodes_on_loopback_train_together(trap_model, world, single_process, tmp_path):
    """Two torchrun "nodes" of one process each (static rendezvous on 127.0.0.1) form one job."""
    output_dir = tmp_path / "run"  # one folder, as on a cluster's shared file system
    port = str(free_port())
    nodes = []
    for node_rank in (0, 1):
        launcher = torchrun(
            1, "--nnodes", "2", "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", port
        )
        command = launcher + [TRAINER_SCRIPT] + run_args(trap_model, world, output_dir, 2, "--do_train")
        nodes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-4000:]
        assert "terminate called" not in stderr

    # 2 nodes x 1 process x 2 examples = the single process's batch of 4, step by step.
    assert_same_losses(output_dir, single_process)
    assert [os.path.basename(c) for c in list_checkpoints(str(output_dir))] == ["checkpoint-2", "checkpoint-4"]
    assert read_json(output_dir / "seqtune_run.json")["status"] == "finished"


def test_non_finite_loss_on_one_process_stops_every_process(trap_model, world, tmp_path):
    """Only rank 0's batch of step 3 makes the loss NaN; both processes stop there, the
    checkpoints before it stay, nothing after it is written."""
    rows = [json.loads(line) for line in open(world["train"], encoding="utf-8")]
    # Sequential order: step 3 is examples 8-11, rank 0 gets 8-9, rank 1 gets 10-11.
    rows[9] = dict(rows[9], document=f"{UNKNOWN_WORD} {rows[9]['document']}")
    files = dict(world, train=write_jsonl(str(tmp_path / "poisoned.jsonl"), rows))
    output_dir = tmp_path / "run"
    args = run_args(
        trap_model,
        files,
        output_dir,
        2,
        "--do_train",
        "--save_steps",
        "1",
        "--max_steps",
        "6",
        "--train_sampling_strategy",
        "sequential",
    )
    result = run_script(TRAINER_SCRIPT, args, launcher=torchrun(2))

    assert result.returncode != 0
    assert "seqtune: error: the training loss is nan at step 3" in result.stderr  # rank 0
    assert (
        "seqtune: error: the training loss is not finite (NaN or inf) on another process at step 3" in result.stderr
    )  # rank 1
    assert "Likely cause: the learning rate (0.0001) is too high" in result.stderr
    assert "checkpoint-2, is kept" in result.stderr
    assert [os.path.basename(c) for c in list_checkpoints(str(output_dir))] == ["checkpoint-1", "checkpoint-2"]
    assert not any(name.startswith("checkpoint-3") for name in os.listdir(output_dir))
    assert not os.path.exists(output_dir / "model.safetensors")
    assert not os.path.exists(output_dir / "train_results.json")


def test_close_process_group_shuts_torch_distributed_down(monkeypatch):
    """What both scripts call at the end of a run, so no rank leaves its gloo threads to interpreter exit."""
    import torch.distributed as dist

    close_process_group()  # no process group: nothing to do
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    close_process_group()
    assert not dist.is_initialized()


# --------------------------------------------------------------------------- the Accelerate loop


def loop_args(model: str, files: dict, output_dir, batch: int) -> list[str]:
    return common_args(model, files["train_fixed_length"], files, output_dir, batch) + [
        "--do_predict",
        "--max_train_steps",
        str(STEPS),
        "--checkpointing_steps",
        "2",
    ]


def test_loop_torchrun_two_processes_train_like_one(trap_model, world, tmp_path):
    """The no_trainer script under torchrun: same losses, metrics and predictions as one process.

    Its training loss is each process's mean over its own batch (averaged by DDP), which is
    the single process's mean when every process holds as many target tokens: hence training
    summaries of one length here (the Trainer weighs tokens globally and needs no such care).
    """
    single, double = tmp_path / "single", tmp_path / "double"
    assert_ok(run_script(LOOP_SCRIPT, loop_args(trap_model, world, single, 4)))
    assert_ok(run_script(LOOP_SCRIPT, loop_args(trap_model, world, double, 2), launcher=torchrun(2)))
    assert_same_losses(double, single)
    # Its eval_loss is rounded to 4 places; its checkpoints are named as the Hugging Face no_trainer script's.
    assert_same_outputs(double, single, eval_loss_tolerance=2e-4, checkpoints=("step_2", "step_4"))


def test_trainer_resumed_mid_epoch_on_two_processes_ends_on_the_same_weights(t5_model, corpus_files, tmp_path):
    """64 examples, 2 processes x 8: 4 steps an epoch; stopped at step 6 (epoch 1, 2 steps in), resumed to 9.
    The resumed epoch must be read in its own order: accelerate's skip wrapper hid the sampler from set_epoch
    on several processes, and the rest of epoch 1 came in epoch 0's order."""
    from safetensors.torch import load_file

    flags = ["--do_train", "--save_steps", "3", "--lr_scheduler_type", "constant", "--logging_steps", "1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert_ok(
        run_script(
            TRAINER_SCRIPT, quick_args(t5_model, corpus_files, straight, *flags, "--max_steps", "9"), torchrun(2)
        )
    )
    assert_ok(
        run_script(TRAINER_SCRIPT, quick_args(t5_model, corpus_files, resumed, *flags, "--max_steps", "6"), torchrun(2))
    )
    result = run_script(
        TRAINER_SCRIPT, quick_args(t5_model, corpus_files, resumed, *flags, "--max_steps", "9"), torchrun(2)
    )
    assert_ok(result)
    assert f"Resuming from {resumed / 'checkpoint-6'}" in result.stderr
    assert logged_losses(resumed) == logged_losses(straight)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(a[name].equal(b[name]) for name in a)
