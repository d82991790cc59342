"""seqtune.arguments: every flag of both recipes, checked once, from the command line or a config file."""

from __future__ import annotations

import json
import os
import re

import pytest
from conftest import LOOP_SCRIPT, REPO, TRAINER_SCRIPT, run_script
from transformers import HfArgumentParser

from seqtune.arguments import (
    DataArguments,
    LoopArguments,
    ModelArguments,
    TrainerArguments,
    check_mixed_precision,
    parse_arguments,
)
from seqtune.errors import UserError
from seqtune.runtime import accelerator_available

TRAINER_TYPES = (ModelArguments, DataArguments, TrainerArguments)
LOOP_TYPES = (ModelArguments, DataArguments, LoopArguments)
# The flags and defaults both scripts had before the refactor into recipes (issue 18): none may go
# missing or change its default.
SAVED_FLAGS = os.path.join(REPO, "tests", "data", "flags.json")
SCRIPTS = {
    "run_summarization.py": (TRAINER_SCRIPT, TRAINER_TYPES),
    "run_summarization_no_trainer.py": (LOOP_SCRIPT, LOOP_TYPES),
}


def plain(value):
    value = getattr(value, "value", value)
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


@pytest.mark.parametrize("script_name", sorted(SCRIPTS))
def test_help_lists_every_saved_flag_with_its_default(script_name):
    script, types = SCRIPTS[script_name]
    saved = json.load(open(SAVED_FLAGS))[script_name]
    result = run_script(script, ["-h"], env={"COLUMNS": "200"}, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = set(re.findall(r"--[A-Za-z0-9_]+", result.stdout))
    missing = sorted(set(saved) - listed)
    assert not missing, f"-h of {script_name} no longer lists {missing}"
    actions = {flag: action for action in HfArgumentParser(types)._actions for flag in action.option_strings}
    for flag, expected in saved.items():
        assert actions[flag].dest == expected["dest"], flag
        assert plain(actions[flag].default) == expected["default"], flag


def test_output_dir_is_required_and_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for types in (TRAINER_TYPES, LOOP_TYPES):
        with pytest.raises(UserError, match="--output_dir is required"):
            parse_arguments(types, ["--model_name_or_path", "m"])
        assert parse_arguments(types, ["--output_dir", "~/run"])[2].output_dir == str(tmp_path / "run")


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--per_device_train_batch_size", "0", "must be at least 1"),
        ("--gradient_accumulation_steps", "0", "must be at least 1"),
        ("--max_train_steps", "0", "must be at least 1"),
        ("--num_warmup_steps", "-1", "cannot be negative"),
        ("--checkpointing_steps", "often", 'positive number or "epoch"'),
    ],
)
def test_loop_arguments_refuse_out_of_range_values(flag, value, message, tmp_path):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_arguments(LOOP_TYPES, ["--output_dir", str(tmp_path), flag, value])


def test_loop_arguments_derived_values(tmp_path):
    args = parse_arguments(
        LOOP_TYPES,
        ["--output_dir", str(tmp_path), "--checkpointing_steps", "5", "--torch_compile_mode", "max-autotune"],
    )[2]
    assert args.checkpoint_every == 5 and args.torch_compile is True
    assert args.do_train and args.do_eval  # the loop always trains and evaluates
    epoch = parse_arguments(LOOP_TYPES, ["--output_dir", str(tmp_path), "--checkpointing_steps", "epoch"])[2]
    assert epoch.checkpoint_every is None


def test_trainer_legacy_flags_map_onto_todays(tmp_path):
    args = parse_arguments(
        TRAINER_TYPES,
        [
            "--output_dir",
            str(tmp_path),
            "--evaluation_strategy",
            "steps",
            "--push_to_hub_model_id",
            "me/model",
            "--no_cuda",
            "--group_by_length",
            "--train_sampling_strategy",
            "random",
        ],
    )[2]
    assert str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "steps"
    assert args.hub_model_id == "me/model"
    assert args.use_cpu is True
    assert args.train_sampling_strategy == "group_by_length"


def test_data_arguments_defaults_and_ranges():
    data = DataArguments(max_target_length=40)
    assert data.val_max_target_length == 40
    for name in ("max_train_samples", "max_source_length", "val_max_target_length"):
        with pytest.raises(UserError, match=f"--{name} must be at least 1"):
            DataArguments(**{name: 0})


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_with_an_alias_key(suffix, tmp_path):
    config = {
        "model_name_or_path": "m",
        "output_dir": str(tmp_path / "out"),
        "dataset_config": "3.0.0",
        "per_device_train_batch_size": 4,
    }
    path = tmp_path / f"run{suffix}"
    path.write_text(json.dumps(config))  # JSON is valid YAML too
    model_args, data_args, args = parse_arguments(LOOP_TYPES, [str(path)])
    assert (model_args.model_name_or_path, data_args.dataset_config_name, args.per_device_train_batch_size) == (
        "m",
        "3.0.0",
        4,
    )


def test_config_file_and_flag_mistakes_are_user_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        parse_arguments(LOOP_TYPES, [str(bad)])
    with pytest.raises(UserError, match="does not exist"):
        parse_arguments(LOOP_TYPES, [str(tmp_path / "missing.yaml")])
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        parse_arguments(LOOP_TYPES, [str(listed)])
    with pytest.raises(UserError, match="-h"):
        parse_arguments(LOOP_TYPES, ["--output_dir", str(tmp_path), "--no_such_flag", "1"])


def test_mixed_precision_flags():
    with pytest.raises(UserError, match="both given"):
        check_mixed_precision(fp16=True, bf16=True)
    with pytest.raises(UserError, match="--fp16 needs a CUDA GPU"):
        check_mixed_precision(fp16=True, bf16=False, use_cpu=True)
    check_mixed_precision(fp16=False, bf16=True, use_cpu=True)
    if not accelerator_available():
        with pytest.raises(UserError, match="Fix: use --bf16"):
            parse_arguments(LOOP_TYPES, ["--output_dir", "/tmp/x", "--fp16"])


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--do_train", "--num_train_epochs", "0"], "--num_train_epochs must be more than 0"),
        (["--do_train", "--num_train_epochs", "-1"], "--num_train_epochs must be more than 0"),
        (["--max_steps", "0"], "--max_steps must be at least 1, or -1"),
        (["--max_steps", "-5"], "--max_steps must be at least 1, or -1"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1"),
        (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size must be at least 1"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be at least 1"),
        (["--learning_rate=-1e-4"], "--learning_rate cannot be negative"),
    ],
)
def test_trainer_arguments_are_checked_as_the_loops_are(flags, message, tmp_path):
    """Issue 19: the Trainer script used to exit 0 after training nothing, or end in a traceback."""
    with pytest.raises(UserError, match=re.escape(message)):
        parse_arguments(TRAINER_TYPES, ["--output_dir", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("types", [TRAINER_TYPES, LOOP_TYPES], ids=["trainer", "loop"])
@pytest.mark.parametrize(
    "flag,value", [("--learning_rate", "nan"), ("--max_grad_norm", "inf"), ("--weight_decay", "-inf")]
)
def test_nan_and_infinity_are_refused_by_name(types, flag, value, tmp_path):
    """The fuzz test's find: --save_steps inf ended in an OverflowError inside transformers."""
    with pytest.raises(UserError, match=re.escape(f"{flag} must be a finite number, got {float(value)}")):
        parse_arguments(types, ["--output_dir", str(tmp_path / "out"), f"{flag}={value}"])


@pytest.mark.parametrize("flag", ["--save_steps", "--logging_steps", "--eval_steps"])
def test_trainer_step_counts_refuse_infinity(flag, tmp_path):
    with pytest.raises(UserError, match=f"{flag} must be a finite number"):
        parse_arguments(TRAINER_TYPES, ["--output_dir", str(tmp_path / "out"), flag, "inf"])


def test_trainer_evaluation_only_with_zero_epochs_is_fine(tmp_path):
    args = parse_arguments(TRAINER_TYPES, ["--output_dir", str(tmp_path), "--do_eval", "--num_train_epochs", "0"])[2]
    assert args.num_train_epochs == 0


def test_loop_refuses_a_negative_learning_rate(tmp_path):
    with pytest.raises(UserError, match="--learning_rate cannot be negative"):
        parse_arguments(LOOP_TYPES, ["--output_dir", str(tmp_path), "--learning_rate", "-0.1"])


def test_unknown_flag_gets_a_suggestion_and_no_usage_dump(tmp_path):
    with pytest.raises(UserError, match=r"unknown arguments --learnin_rate 1 \(did you mean --learning_rate\?\)"):
        parse_arguments(LOOP_TYPES, ["--output_dir", str(tmp_path), "--learnin_rate", "1"])
    with pytest.raises(UserError, match=r"invalid int value: 'two'\. Run with -h"):
        parse_arguments(TRAINER_TYPES, ["--output_dir", str(tmp_path), "--max_steps", "two"])


def test_resume_flag_help_says_what_it_does():
    parser = HfArgumentParser(TRAINER_TYPES)
    (action,) = [a for a in parser._actions if a.dest == "resume_from_checkpoint"]
    assert "Not directly used" not in action.help and "newest complete checkpoint" in action.help


def test_changed_arguments_show_only_what_differs(tmp_path):
    from seqtune.arguments import changed_arguments

    args = parse_arguments(
        TRAINER_TYPES, ["--output_dir", str(tmp_path), "--learning_rate", "1e-3", "--hub_token", "hf_secret"]
    )[2]
    changed = changed_arguments(args)
    assert changed["learning_rate"] == 1e-3 and "hub_token" not in changed
    assert "adam_beta1" not in changed and "report_to" not in changed and len(changed) < 12
