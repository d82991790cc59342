"""Secrets and remote code: tokens never reach a log or a file; code from a model repository
runs only with --trust_remote_code.

A real run of each script gets recognisable fake tokens (--token, --hub_token, HF_TOKEN);
then its captured stdout/stderr and EVERY file written under the output dir (checkpoints,
pickled training arguments, tensorboard events, results, model card, report) are searched
for them, byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import LOOP_SCRIPT, TRAINER_SCRIPT, quick_args, run_script

from seqtune.arguments import DataArguments, LoopArguments, ModelArguments, TrainerArguments, parse_arguments
from seqtune.errors import UserError
from seqtune.modeling import load_model_and_tokenizer

TOKEN = "hf_SeqtuneFakeModelToken7Q2xLp9Vw"
HUB_TOKEN = "hf_SeqtuneFakeHubToken4Rm8Zt1Ky"
ENV_TOKEN = "hf_SeqtuneFakeEnvToken3Jd6Hs5Nb"
SECRETS = (TOKEN, HUB_TOKEN, ENV_TOKEN)


def files_containing(folder: str, secret: str) -> list[str]:
    found = []
    needle = secret.encode()
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                if needle in handle.read():
                    found.append(os.path.relpath(path, folder))
    return found


SCRIPTS = [
    pytest.param(TRAINER_SCRIPT, id="trainer"),
    pytest.param(
        LOOP_SCRIPT,
        id="no_trainer",
        marks=pytest.mark.skipif(not os.path.exists(LOOP_SCRIPT), reason="no_trainer script missing"),
    ),
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_tokens_appear_in_no_log_and_no_written_file(script, t5_model, corpus_files, tmp_path, isolated_hf_home):
    out = tmp_path / "out"
    secrets = ["--token", TOKEN, f"--hub_token={HUB_TOKEN}"]
    if script == TRAINER_SCRIPT:
        flags = [
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--predict_with_generate",
            "--max_steps",
            "2",
            "--save_steps",
            "1",
            "--logging_steps",
            "1",
            "--max_eval_samples",
            "4",
            "--max_predict_samples",
            "4",
        ]
    else:
        flags = [
            "--max_train_steps",
            "2",
            "--checkpointing_steps",
            "1",
            "--with_tracking",
            "--do_predict",
            "--max_eval_samples",
            "4",
            "--max_predict_samples",
            "4",
            "--logging_steps",
            "1",
        ]
    args = quick_args(t5_model, corpus_files, out, *flags, *secrets)
    args[args.index("--report_to") + 1] = "tensorboard"  # its event files hold the hyper-parameters
    result = run_script(script, args, env={"HF_TOKEN": ENV_TOKEN})
    assert result.returncode == 0, result.stderr[-3000:]

    written = [os.path.join(root, name) for root, _, names in os.walk(out) for name in names]
    checkpoint_prefix = "checkpoint-" if script == TRAINER_SCRIPT else "step_"  # the no_trainer script: step_N
    assert any(checkpoint_prefix in path for path in written) and any("tfevents" in path for path in written)
    for secret in SECRETS:
        assert secret not in result.stdout and secret not in result.stderr
        assert files_containing(str(out), secret) == [], f"{secret} written to a file"

    # The values were there to hide: the saved arguments and the command show that they were redacted.
    saved = json.loads((out / "seqtune_args.json").read_text())
    assert saved["token"] == "<redacted>"
    assert saved["hub_token"] in ("<redacted>", None)  # None: dropped early, as it is only for --push_to_hub
    run = json.loads((out / "seqtune_run.json").read_text())
    assert "--token" in run["command"] and "--hub_token=<redacted>" in run["command"]


def test_the_pickled_training_arguments_keep_everything_but_the_token(tmp_path):
    """training_args.bin (in each checkpoint and beside the final model) is a pickle of the arguments."""
    import pickle

    (args,) = parse_arguments(
        (TrainerArguments,), ["--output_dir", str(tmp_path), "--hub_token", HUB_TOKEN, "--learning_rate", "0.25"]
    )
    restored = pickle.loads(pickle.dumps(args))
    assert restored.hub_token is None and restored.learning_rate == 0.25 and restored.output_dir == str(tmp_path)
    assert args.hub_token == HUB_TOKEN  # the run itself keeps it (for --push_to_hub)


# --------------------------------------------------------------------------- remote code

REMOTE_CONFIG = """
import os
from transformers import T5Config

with open(os.environ["SEQTUNE_REMOTE_CODE_MARKER"], "a") as handle:
    handle.write("repository code ran\\n")


class CustomT5Config(T5Config):
    model_type = "seqtune-custom-t5"
"""

REMOTE_MODEL = """
from transformers import T5ForConditionalGeneration

from .configuration_custom import CustomT5Config


class CustomT5(T5ForConditionalGeneration):
    config_class = CustomT5Config
"""


@pytest.fixture()
def remote_code_model(t5_model, tmp_path, monkeypatch) -> tuple[str, str]:
    """The tiny T5 turned into a model "defined by code in its repository" that leaves a mark when run."""
    folder = tmp_path / "custom-model"
    shutil.copytree(t5_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="seqtune-custom-t5",
        auto_map={
            "AutoConfig": "configuration_custom.CustomT5Config",
            "AutoModelForSeq2SeqLM": "modeling_custom.CustomT5",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_custom.py").write_text(REMOTE_MODEL)
    marker = tmp_path / "remote-code-ran.txt"
    monkeypatch.setenv("SEQTUNE_REMOTE_CODE_MARKER", str(marker))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    return str(folder), str(marker)


@pytest.mark.parametrize("loop", [False, True], ids=["trainer", "no_trainer"])
def test_trust_remote_code_is_off_unless_passed(loop, tmp_path):
    argv = ["--model_name_or_path", "m", "--output_dir", str(tmp_path)]
    if loop:
        types = (ModelArguments, DataArguments, LoopArguments)
    else:
        types = (ModelArguments, DataArguments, TrainerArguments)
    assert parse_arguments(types, argv)[0].trust_remote_code is False
    assert parse_arguments(types, argv + ["--trust_remote_code"])[0].trust_remote_code is True


def test_repository_code_runs_only_with_trust_remote_code(remote_code_model, isolated_hf_home):
    folder, marker = remote_code_model
    data_args = DataArguments(max_source_length=64, source_prefix="summarize: ")
    with pytest.raises(UserError) as refused:
        load_model_and_tokenizer(ModelArguments(model_name_or_path=folder), data_args)
    assert "Fix: the model is defined by code in its repository" in str(refused.value)
    assert "--trust_remote_code" in str(refused.value)
    assert not os.path.exists(marker), "the repository's code ran without --trust_remote_code"

    _, model = load_model_and_tokenizer(ModelArguments(model_name_or_path=folder, trust_remote_code=True), data_args)
    assert type(model).__name__ == "CustomT5"
    assert os.path.exists(marker)
