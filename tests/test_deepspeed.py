"""DeepSpeed ZeRO with real torchrun / accelerate launch processes on the CPU (gloo), both scripts.

DeepSpeed JIT-compiles its shared-memory communication op on first use (minutes); seqtune caches
it inside the venv (`seqtune.sharding.use_venv_extensions_dir`), and the `deepspeed_op` fixture
builds it once before the first run, so every run here reuses it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import LOOP_SCRIPT, REPO, TRAINER_SCRIPT, assert_summarizes, free_port, quick_args, run_script, torchrun

from seqtune.arguments import DataArguments, LoopArguments, ModelArguments, TrainerArguments, parse_arguments
from seqtune.checkpoints import MANIFEST_NAME, incomplete_reason, list_checkpoints
from seqtune.errors import UserError
from seqtune.sharding import deepspeed_config, use_venv_extensions_dir

pytest.importorskip("deepspeed")

CONFIGS = os.path.join(REPO, "configs", "deepspeed")
ZERO2 = os.path.join(CONFIGS, "zero2.json")
ZERO3 = os.path.join(CONFIGS, "zero3.json")
DDP_TOLERANCE = 1e-6  # ZeRO-2 vs DDP, largest weight difference after 6 steps (measured: 0 to 2.4e-7, a few ulps)
RESUME_TOLERANCE = 1e-6  # resumed vs uninterrupted ZeRO-2 run (measured: 0)
# ZeRO-3 vs DDP after 4 steps: another reduction order and partitioned updates (measured up to 1.1e-5, which
# Adam's division by sqrt(v) amplifies where a gradient is near 0); one wrong or missing step at lr 1e-3 moves
# weights by ~1e-3.
ZERO3_TOLERANCE = 5e-5


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-5000:]}"


def weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(str(folder), "model.safetensors"))


def largest_difference(a: dict, b: dict) -> float:
    common = sorted(set(a) & set(b))
    assert len(common) >= 40, (sorted(a), sorted(b))
    return max((a[name].double() - b[name].double()).abs().max().item() for name in common)


def trainer_args(t5_model, corpus_files, output_dir, *extra) -> list[str]:
    return quick_args(
        t5_model,
        corpus_files,
        output_dir,
        "--do_train",
        "--per_device_train_batch_size",
        "4",
        "--lr_scheduler_type",
        "constant",  # the same schedule for a 4-step run resumed to 6 and an uninterrupted 6-step run
        "--logging_steps",
        "1",
        *extra,
    )


@pytest.fixture(scope="module")
def deepspeed_op():
    """DeepSpeed's CPU communication op, built (once per venv, minutes) or loaded from the venv's cache."""
    use_venv_extensions_dir()  # the runs below inherit TORCH_EXTENSIONS_DIR
    code = (
        "from seqtune.sharding import use_venv_extensions_dir; use_venv_extensions_dir()\n"
        "from deepspeed.comm.torch import build_shm_op; build_shm_op()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=560)
    assert result.returncode == 0, result.stderr[-3000:]


# --------------------------------------------------------------------------- configs and messages (fast)


@pytest.mark.parametrize("name", ["zero2.json", "zero2_offload.json", "zero3.json", "zero3_offload.json"])
def test_shipped_configs_are_valid(name):
    config = deepspeed_config(os.path.join(CONFIGS, name))
    assert "optimizer" not in config and "scheduler" not in config  # the recipes' own AdamW and schedule
    assert "train_batch_size" not in config
    if config["zero_optimization"]["stage"] == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_zero3_gotchas_are_handled(tmp_path):
    naive = {"zero_optimization": {"stage": 3}, "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto"}
    config = deepspeed_config(json.dumps(naive))
    zero = config["zero_optimization"]
    assert "train_batch_size" not in config  # breaks zero.Init when "auto"
    assert zero["stage3_param_persistence_threshold"] == "auto"  # a small model is partitioned too
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # the final folder has model.safetensors
    assert naive["zero_optimization"] == {"stage": 3}  # the user's own mapping is left alone
    explicit = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    assert deepspeed_config(explicit)["zero_optimization"]["stage3_param_persistence_threshold"] == 0


def test_extensions_dir_is_the_venvs(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    folder = use_venv_extensions_dir()
    if sys.prefix != sys.base_prefix:
        assert folder == os.path.join(sys.prefix, "torch_extensions") == os.environ["TORCH_EXTENSIONS_DIR"]
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/somewhere/else")
    assert use_venv_extensions_dir() == "/somewhere/else"


def bad_configs(tmp_path) -> list[tuple[str, str]]:
    """(--deepspeed value, what the message must say)."""
    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": {"stage": 2,}}')
    stage5 = tmp_path / "stage5.json"
    stage5.write_text('{"zero_optimization": {"stage": 5}}')
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    missing = tmp_path / "nowhere" / "zero2.json"
    return [
        (
            str(missing),
            rf"{missing}: .*does not exist\. Fix: pass --deepspeed the path .*configs/deepspeed/zero2\.json",
        ),
        (str(broken), rf"DeepSpeed config {broken} is not valid JSON: .*\(line 1, column \d+\)\. Fix: correct"),
        (str(stage5), rf'DeepSpeed config {stage5}: unknown ZeRO stage 5 .*Fix: "stage": 2 .* or 3'),
        (str(listed), rf"DeepSpeed config {listed} must be a JSON object"),
        ('{"zero_optimization": {"stage": 3', r"--deepspeed \(inline JSON\) is not valid JSON"),
        ('{"zero_optimization": {"stage": "two"}}', r'unknown ZeRO stage "two"'),
    ]


def test_bad_config_is_refused_when_parsing(tmp_path, corpus_files):
    for value, message in bad_configs(tmp_path):
        argv = ["--model_name_or_path", "m", "--output_dir", str(tmp_path / "out"), "--deepspeed", value]
        with pytest.raises(UserError, match=message):
            parse_arguments((ModelArguments, DataArguments, TrainerArguments), argv)
        with pytest.raises(UserError, match=message):
            parse_arguments((ModelArguments, DataArguments, LoopArguments), argv)
    assert not (tmp_path / "out").exists()


def test_bad_config_exits_2_with_one_line(tmp_path, t5_model, corpus_files):
    """Both scripts (the loop through accelerate launch's environment too): one line naming the file, exit 2."""
    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": {"stage": 2,}}')
    out = tmp_path / "out"
    result = run_script(TRAINER_SCRIPT, quick_args(t5_model, corpus_files, out, "--do_train", "--deepspeed", broken))
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"seqtune: error: DeepSpeed config {broken} is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(tmp_path / "missing.json")}
    result = run_script(LOOP_SCRIPT, quick_args(t5_model, corpus_files, out), env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"seqtune: error: --deepspeed_config_file {tmp_path / 'missing.json'}: " in result.stderr
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- real runs (torchrun, 2 processes)


@pytest.fixture(scope="module")
def zero2_six_steps(deepspeed_op, t5_model, corpus_files, tmp_path_factory):
    """An uninterrupted ZeRO-2 Trainer run of 6 steps on 2 processes (checkpoints every 2)."""
    out = tmp_path_factory.mktemp("zero2") / "run"
    args = trainer_args(t5_model, corpus_files, out, "--max_steps", "6", "--save_steps", "2", "--deepspeed", ZERO2)
    assert_ok(run_script(TRAINER_SCRIPT, args, launcher=torchrun(2)))
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_zero2_trainer_matches_ddp(zero2_six_steps, t5_model, corpus_files, tmp_path):
    ddp = tmp_path / "ddp"
    assert_ok(run_script(TRAINER_SCRIPT, trainer_args(t5_model, corpus_files, ddp, "--max_steps", "6"), torchrun(2)))
    assert largest_difference(weights(ddp), weights(zero2_six_steps)) <= DDP_TOLERANCE
    # DeepSpeed's checkpoints are seqtune's: published whole, with every rank's shard in the manifest.
    found = list_checkpoints(str(zero2_six_steps))
    assert [os.path.basename(c) for c in found] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    with open(os.path.join(found[-1], MANIFEST_NAME), encoding="utf-8") as handle:
        files = json.load(handle)["files"]
    for rank in (0, 1):
        assert f"global_step6/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files
    assert incomplete_reason(found[-1]) is None
    assert not any(name.startswith(".seqtune-") for name in os.listdir(zero2_six_steps))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_zero2_trainer_resumes_from_its_checkpoint_on_another_number_of_processes(
    zero2_six_steps, t5_model, corpus_files, tmp_path
):
    """4 steps on 2 processes, then the same command with --max_steps 6 on 1 (--global_batch_size 8: accumulation
    2): DeepSpeed cannot load the partitioned state there, so seqtune converts it to DeepSpeed's universal format in
    a temporary view (the checkpoint itself untouched) and resumes from that, ending with the weights of the
    uninterrupted 6-step run. (A resume on the same number of processes, DeepSpeed's own path: the ZeRO-3 test and
    scripts/torture.py --deepspeed.)"""
    processes = 1
    out = tmp_path / "run"
    base = trainer_args(t5_model, corpus_files, out, "--save_steps", "2", "--deepspeed", ZERO2)
    base += ["--global_batch_size", "8"]
    assert_ok(run_script(TRAINER_SCRIPT, base + ["--max_steps", "4"], launcher=torchrun(2)))
    checkpoint = out / "checkpoint-4"
    manifest_before = (checkpoint / MANIFEST_NAME).read_text()
    result = run_script(TRAINER_SCRIPT, base + ["--max_steps", "6"], launcher=torchrun(processes))
    assert_ok(result)
    assert f"Resuming from {checkpoint}" in result.stderr
    converted = "DeepSpeed ZeRO state of 2 process(es), this run has 1: converting it to DeepSpeed's universal"
    assert converted in result.stderr, result.stderr[-3000:]
    with open(out / "trainer_state.json", encoding="utf-8") as handle:
        assert json.load(handle)["global_step"] == 6
    assert largest_difference(weights(out), weights(zero2_six_steps)) <= RESUME_TOLERANCE
    assert (checkpoint / MANIFEST_NAME).read_text() == manifest_before and incomplete_reason(str(checkpoint)) is None
    assert not any(name.startswith(".seqtune-") for name in os.listdir(out))  # the view is gone


@pytest.fixture(scope="module")
def roomy_t5(t5_model, tmp_path_factory) -> str:
    """The tiny T5 with 32 embedding rows more than its tokenizer has (as t5-small's 32,128 for 32,100 tokens)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = str(tmp_path_factory.mktemp("models") / "roomy-t5")
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_model)
    model.resize_token_embeddings(model.get_input_embeddings().weight.shape[0] + 32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(t5_model).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_zero3_trainer_matches_ddp_and_its_model_summarizes(deepspeed_op, roomy_t5, corpus_files, tmp_path):
    """A ZeRO-3 config as a user might write it (train_batch_size "auto", no persistence threshold, no
    gather flag) trains with sharded weights, as DDP does, and ends with a model.safetensors from_pretrained
    loads; the embeddings keep their rows (a ZeRO-3 placeholder's shape is empty: not a reason to resize).
    Then it resumes on 2 processes, and is refused on 1."""
    t5_model = roomy_t5
    naive = tmp_path / "my_zero3.json"
    naive.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 3},
                "train_batch_size": "auto",
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
            }
        )
    )
    out = tmp_path / "run"
    args = trainer_args(t5_model, corpus_files, out, "--max_steps", "4", "--save_steps", "4", "--deepspeed", naive)
    assert_ok(run_script(TRAINER_SCRIPT, args, launcher=torchrun(2)))
    states = out / "checkpoint-4" / "global_step4"
    model_bytes = os.path.getsize(out / "model.safetensors")
    for rank in (0, 1):  # partitioned: each rank's model states hold a small part of the weights
        assert os.path.getsize(states / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt") < model_bytes / 4
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    base = AutoModelForSeq2SeqLM.from_pretrained(t5_model)
    saved = weights(out)
    assert {name for name, _ in model.named_parameters()} - {"lm_head.weight"} <= set(saved) | {
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
    }
    assert all(tensor.numel() > 0 for tensor in saved.values())  # gathered, not ZeRO-3's empty placeholders
    assert model.get_input_embeddings().weight.shape == base.get_input_embeddings().weight.shape
    assert largest_difference(dict(model.state_dict()), dict(base.state_dict())) > 1e-4  # trained
    ddp = tmp_path / "ddp"
    assert_ok(run_script(TRAINER_SCRIPT, trainer_args(t5_model, corpus_files, ddp, "--max_steps", "4"), torchrun(2)))
    assert largest_difference(weights(ddp), saved) <= ZERO3_TOLERANCE
    assert_summarizes(out, tmp_path)
    # More steps on 1 process: DeepSpeed cannot load ZeRO-3 optimizer state exactly there (its universal loader
    # is not exact for ZeRO-3): refused with one message, the checkpoint untouched.
    more = trainer_args(t5_model, corpus_files, out, "--max_steps", "6", "--save_steps", "4", "--deepspeed", naive)
    refused = run_script(TRAINER_SCRIPT, more + ["--global_batch_size", "8"], launcher=torchrun(1))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr.split("seqtune: error:")[0][-2000:]
    assert "ZeRO-3 state of 2 process(es) and this run has 1" in refused.stderr, refused.stderr[-3000:]
    assert f"Fix: resume on 2 process(es), or start a new run from its weights (--model_name_or_path {out}" in (
        refused.stderr
    )
    # On 2 processes it resumes (its partitioned, tied embeddings are recognised as the checkpoint's model).
    result = run_script(TRAINER_SCRIPT, more, launcher=torchrun(2))
    assert_ok(result)
    assert f"Resuming from {out / 'checkpoint-4'}" in result.stderr
    with open(out / "trainer_state.json", encoding="utf-8") as handle:
        assert json.load(handle)["global_step"] == 6


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_accelerate_loop_zero2_trains_saves_and_resumes(deepspeed_op, t5_model, corpus_files, tmp_path):
    """`accelerate launch --use_deepspeed --deepspeed_config_file zero2.json`, 2 processes: DeepSpeed's
    checkpoints published as step_N, a loadable final model; more steps under torchrun --deepspeed on 1 process
    (--global_batch_size 8) resume through a universal view of the 2-process ZeRO state."""
    out = tmp_path / "run"
    launcher = [
        os.path.join(os.path.dirname(sys.executable), "accelerate"),
        "launch",
        "--use_deepspeed",
        "--deepspeed_config_file",
        ZERO2,
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
    ]
    base = quick_args(t5_model, corpus_files, out, "--per_device_train_batch_size", "4", "--checkpointing_steps", "2")
    # A warm-up ramp over 10 steps, whatever the run's length: a resumed schedule continues it.
    base += ["--lr_scheduler_type", "constant_with_warmup", "--num_warmup_steps", "10", "--logging_steps", "1"]
    result = run_script(LOOP_SCRIPT, base + ["--max_train_steps", "4"], launcher=launcher)
    assert_ok(result)
    assert "DeepSpeed ZeRO stage 2" in result.stderr
    step_4 = out / "step_4"
    with open(step_4 / MANIFEST_NAME, encoding="utf-8") as handle:
        files = json.load(handle)["files"]
    assert {f"pytorch_model/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)} <= set(files)
    from transformers import AutoModelForSeq2SeqLM

    AutoModelForSeq2SeqLM.from_pretrained(out)
    # Resumed under torchrun with the loop's own --deepspeed flag on 1 process: the same ZeRO-2 run, another
    # launcher, another number of processes (the same global batch).
    manifest_before = (step_4 / MANIFEST_NAME).read_text()
    resumed = base + ["--max_train_steps", "6", "--deepspeed", ZERO2, "--global_batch_size", "8"]
    result = run_script(LOOP_SCRIPT, resumed, launcher=torchrun(1))
    assert_ok(result)
    assert f"Resuming from {step_4}" in result.stderr and "DeepSpeed ZeRO stage 2" in result.stderr
    assert "DeepSpeed ZeRO state of 2 process(es), this run has 1: converting it" in result.stderr
    assert (step_4 / MANIFEST_NAME).read_text() == manifest_before and incomplete_reason(str(step_4)) is None
    assert not any(name.startswith(".seqtune-") for name in os.listdir(out))  # the universal view is gone
    assert [os.path.basename(c) for c in list_checkpoints(str(out))][-1] == "step_6"
    AutoModelForSeq2SeqLM.from_pretrained(out)
    # The learning-rate schedule was in the checkpoint (accelerate leaves it out of DeepSpeed's): 6 steps up.
    with open(out / "log_history.jsonl", encoding="utf-8") as handle:
        events = [json.loads(line) for line in handle]
    rates = {e["step"]: e["learning_rate"] for e in events if e.get("event") == "train"}
    assert rates[6] == pytest.approx(6 * rates[1]) and rates[5] == pytest.approx(5 * rates[1]), rates
