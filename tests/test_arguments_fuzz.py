"""Bad flags and config files at scale: hypothesis throws mistyped, misspelled, out-of-range and
contradictory values at seqtune.arguments.parse_arguments, for both recipes.

Every case must end in seqtune's UserError (one clear message, exit 2 at the entry points) or in
parsed arguments; any other exception (TypeError, ValueError, ZeroDivisionError from deeper down)
fails. Config files are written as YAML and JSON, values typed the way a person writes them
(`learning_rate: 1e-3`, `max_steps: two`, lists where one value goes, ...).

Bounded for `make test`: 150 examples per test (SEQTUNE_FUZZ_EXAMPLES raises it), drawn the same way
on every run so that CI's verdict on a change depends on the change; SEQTUNE_FUZZ_RANDOM=1 draws afresh
(how new cases are found: run it with many examples before adding flags or checks).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import timedelta

import pytest

hypothesis = pytest.importorskip("hypothesis")
import yaml  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from seqtune.arguments import (  # noqa: E402
    DataArguments,
    LoopArguments,
    ModelArguments,
    OutputArguments,
    TrainerArguments,
    parse_arguments,
)
from seqtune.errors import UserError  # noqa: E402

EXAMPLES = int(os.environ.get("SEQTUNE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=20),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
    derandomize=not os.environ.get("SEQTUNE_FUZZ_RANDOM"),
    print_blob=True,
)
RECIPES = {
    "trainer": (ModelArguments, DataArguments, TrainerArguments),
    "loop": (ModelArguments, DataArguments, LoopArguments),
}
# The flags users touch most, plus the ones whose bad values used to end in tracebacks (issue 19).
FLAGS = [
    "learning_rate",
    "max_steps",
    "max_train_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "max_source_length",
    "max_target_length",
    "val_max_target_length",
    "max_train_samples",
    "num_beams",
    "weight_decay",
    "warmup_steps",
    "num_warmup_steps",
    "save_total_limit",
    "checkpointing_steps",
    "logging_steps",
    "lr_scheduler_type",
    "train_sampling_strategy",
    "fp16",
    "bf16",
    "seed",
    "do_train",
    "do_eval",
    "predict_with_generate",
    "eval_strategy",
    "evaluation_strategy",
    "save_steps",
    "max_grad_norm",
    "source_prefix",
    "dataset_config",
    "overwrite_output_dir",
    "report_to",
    "torch_compile_mode",
    "hub_strategy",
]
MISSPELLED = ["learnin_rate", "max_step", "num_epochs", "batch_size", "outputdir", "lr", "fp-16"]
TEXT_VALUES = [
    "0",
    "-1",
    "-2",
    "1",
    "3",
    "0.5",
    "1e-3",
    "-1e-3",
    "two",
    "",
    " ",
    "true",
    "false",
    "yes",
    "None",
    "nan",
    "inf",
    "1e400",
    "epoch",
    "linear",
    "cosine",
    "steps",
    "no",
    "[1, 2]",
    "{}",
    "10" * 30,
    "é",
]
YAML_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(TEXT_VALUES),
    st.lists(st.sampled_from(["1", 2, "a", None]), max_size=3),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2),
)


def parse_or_user_error(types, argv):
    """The only two acceptable outcomes: parsed arguments, or one UserError."""
    try:
        return parse_arguments(types, argv, prog="fuzz")
    except UserError as error:
        message = str(error)
        assert message.strip(), "an empty error message"
        return None


@FUZZ
@given(
    recipe=st.sampled_from(sorted(RECIPES)),
    flags=st.lists(
        st.tuples(st.sampled_from(FLAGS + MISSPELLED), st.sampled_from(TEXT_VALUES), st.booleans()), max_size=5
    ),
)
def test_command_lines_parse_or_fail_with_one_message(recipe, flags):
    argv = ["--output_dir", tempfile.gettempdir() + "/seqtune-fuzz-never-written"]
    for name, value, inline in flags:
        argv += [f"--{name}={value}"] if inline else [f"--{name}", value]
    parse_or_user_error(RECIPES[recipe], argv)


@FUZZ
@given(
    recipe=st.sampled_from(sorted(RECIPES)),
    config=st.dictionaries(st.sampled_from(FLAGS + MISSPELLED), YAML_VALUES, max_size=6),
    as_json=st.booleans(),
)
def test_config_files_parse_or_fail_with_one_message(recipe, config, as_json, tmp_path_factory):
    config = {"output_dir": tempfile.gettempdir() + "/seqtune-fuzz-never-written", **config}
    folder = tmp_path_factory.mktemp("config")
    path = folder / ("run.json" if as_json else "run.yaml")
    try:
        text = json.dumps(config) if as_json else yaml.safe_dump(config)
    except ValueError:  # NaN/inf are not JSON
        text = yaml.safe_dump(config)
        path = folder / "run.yaml"
    path.write_text(text)
    parsed = parse_or_user_error(RECIPES[recipe], [str(path)])
    if parsed is not None:  # what was accepted is typed as on the command line
        values = {name: getattr(parsed[2], name) for name in ("learning_rate", "seed")}
        assert all(isinstance(value, (int, float)) for value in values.values())


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize(
    "text,message",
    [
        ("learning_rate: 1e-3\n", None),  # PyYAML reads 1e-3 as a string: coerced as the command line would
        ("{steps}: two\n", "is not a valid int"),
        ("learnin_rate: 0.1\n", "did you mean learning_rate"),
        ("per_device_train_batch_size: [8, 16]\n", "expected int"),
        ("per_device_train_batch_size: 0\n", "must be at least 1"),
        ("learning_rate: -0.1\n", "cannot be negative"),
        ("fp16: maybe\n", "not true or false"),
        ("seed: {{}}\n", "got a mapping"),  # once let through to the checks as a dict: AttributeError
        ("learning_rate: .nan\n", "must be a finite number"),
    ],
)
def test_config_file_cases_of_issue_19(recipe, text, message, tmp_path):
    path = tmp_path / "run.yaml"
    steps = "max_steps" if recipe == "trainer" else "max_train_steps"
    path.write_text(f"output_dir: {tmp_path / 'out'}\n" + text.format(steps=steps))
    if message is None:
        assert parse_arguments(RECIPES[recipe], [str(path)])[2].learning_rate == 1e-3
        return
    with pytest.raises(UserError, match=message) as caught:
        parse_arguments(RECIPES[recipe], [str(path)])
    assert str(path) in str(caught.value)  # the message names the file
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_shared_base_is_where_output_dir_rules_live():
    assert issubclass(TrainerArguments, OutputArguments) and issubclass(LoopArguments, OutputArguments)
