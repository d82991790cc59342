"""--push_to_hub against a local fake hub (tests/fake_hub.py): what arrives, under which name,
with which card; early failures; an upload that fails mid-run; no token in any file.

The scripts run as subprocesses with HF_ENDPOINT pointing at the fake hub (huggingface_hub
reads it at import time) and HF_HUB_OFFLINE=0; only loopback traffic.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml
from conftest import LOOP_SCRIPT, REPO, TRAINER_SCRIPT, quick_args, run_script
from fake_hub import FakeHub, User, hub_env

from seqtune import __version__
from seqtune.card import render_model_card

TOKEN = "hf_seqtuneWriteToken7Kq2ZpX9"  # alice, member of the acme organization
READ_TOKEN = "hf_seqtuneReadOnly3Vt8Lm"  # bob, read-only
BAD_TOKEN = "hf_seqtuneNotAToken0000"  # unknown to the hub
SECRETS = (TOKEN, READ_TOKEN, BAD_TOKEN)


@pytest.fixture()
def fake_hub():
    hub = FakeHub({TOKEN: User("alice", orgs=("acme",)), READ_TOKEN: User("bob", role="read")}).start()
    yield hub
    hub.stop()


def train(t5_model, corpus_files, out, env, *extra):
    args = quick_args(t5_model, corpus_files, out, "--do_train", "--max_steps", "4", "--save_steps", "2", *extra)
    return run_script(TRAINER_SCRIPT, args, env=env, timeout=300)


def files_under(folder):
    for root, _, names in os.walk(folder):
        for name in names:
            yield os.path.join(root, name)


def assert_no_secret(result, hub: FakeHub, *folders, skip=()):
    """No token in any file written, any file or body the hub received, or the logs."""
    for folder in folders:
        for path in files_under(folder):
            if path in skip:
                continue
            with open(path, "rb") as handle:
                data = handle.read()
            for secret in SECRETS:
                assert secret.encode() not in data, f"token found in {path}"
    for name, data in hub.received_files().items():
        for secret in SECRETS:
            assert secret.encode() not in data, f"token found in pushed file {name}"
    for body in hub.bodies:
        for secret in SECRETS:
            assert secret.encode() not in body
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- full runs


def test_push_every_save_private_named_repo(t5_model, corpus_files, tmp_path, fake_hub):
    """--hub_model_id NAME --hub_token (wins over a bad HF_TOKEN) --hub_private_repo, default every_save."""
    out = tmp_path / "out"
    env = hub_env(fake_hub.url, tmp_path, hf_token=BAD_TOKEN)
    result = train(
        t5_model,
        corpus_files,
        out,
        env,
        "--do_eval",
        "--predict_with_generate",
        "--max_eval_samples",
        "4",
        "--logging_steps",
        "1",
        "--push_to_hub",
        "--hub_model_id",
        "my-summarizer",
        "--hub_token",
        TOKEN,
        "--hub_private_repo",
    )
    assert result.returncode == 0, result.stderr[-3000:]

    assert list(fake_hub.repos) == ["alice/my-summarizer"]
    repo = fake_hub.repos["alice/my-summarizer"]
    assert repo.visibility == "private"
    assert fake_hub.commit_messages("alice/my-summarizer") == [
        "Training in progress, step 2",
        "Training in progress, step 4",
        "End of training",
    ]
    # Checkpoint pushes carry the model files, not the training state.
    step_two = repo.commits[0].files
    assert "model.safetensors" in step_two and "config.json" in step_two
    assert not any(name.startswith(("optimizer", "scheduler", "rng_state", "trainer_state")) for name in step_two)
    # The final push: every shareable file exactly as it is on disk, nothing else.
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "README.md",
        "eval_results.json",
        "all_results.json",
        "train_results.json",
        "plot_training_loss.png",
    ):
        assert repo.files[name] == read(out / name), name
    assert not any(path.startswith("checkpoint-") or path.startswith(".") for path in repo.files)
    assert "seqtune_run.json" not in repo.files

    card = repo.files["README.md"].decode()
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["pipeline_tag"] == "summarization" and "base_model" not in metadata  # a local folder
    assert "# my-summarizer" in card and 'AutoModelForSeq2SeqLM.from_pretrained("alice/my-summarizer")' in card
    assert t5_model in card  # base model
    assert "train.jsonl" in card and "validation.jsonl" in card  # the data files
    assert "**summarization**" in card
    assert "| eval_rouge1 |" in card and "| train_loss |" in card and "eval_runtime" not in card
    assert "- learning_rate: 0.001\n" in card and "- max_source_length: 96\n" in card
    assert "'summarize: '" in card and "--source_prefix 'summarize: '" in card  # copy-pasteable command
    assert "![Training loss](plot_training_loss.png)" in card  # the report's training curve
    assert f"seqtune {__version__}" in card
    assert "--hub_token '<redacted>'" in card and "--push_to_hub" in card
    assert fake_hub.unknown == []
    assert_no_secret(result, fake_hub, out, env["HF_HOME"])


def test_legacy_name_org_and_checkpoint_strategy(t5_model, corpus_files, tmp_path, fake_hub):
    """--push_to_hub_model_id ORG/NAME, HF_TOKEN (wins over a bad stored log-in), --hub_strategy checkpoint."""
    out = tmp_path / "out"
    env = hub_env(fake_hub.url, tmp_path, hf_token=TOKEN, stored=BAD_TOKEN)
    result = train(
        t5_model,
        corpus_files,
        out,
        env,
        "--push_to_hub",
        "--push_to_hub_model_id",
        "acme/legacy-name",
        "--hub_strategy",
        "checkpoint",
    )
    assert result.returncode == 0, result.stderr[-3000:]

    repo = fake_hub.repos["acme/legacy-name"]
    assert repo.visibility is None  # not asked: the hub's default
    assert fake_hub.commit_messages("acme/legacy-name") == [
        "Training in progress, step 2",
        "Training in progress, step 4",
        "End of training",
    ]
    # last-checkpoint/ holds the newest checkpoint, training state included, for resuming.
    local = out / "checkpoint-4"
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json", "model.safetensors"):
        assert repo.files[f"last-checkpoint/{name}"] == read(local / name), name
    assert json.loads(repo.files["last-checkpoint/trainer_state.json"])["global_step"] == 4
    assert repo.files["model.safetensors"] == read(out / "model.safetensors")
    assert "# legacy-name" in repo.files["README.md"].decode()
    assert_no_secret(result, fake_hub, out, env["HF_HOME"], skip={os.path.join(env["HF_HOME"], "token")})


def test_stored_login_default_name_end_strategy(t5_model, corpus_files, tmp_path, fake_hub):
    """No name: the basename of --output_dir in the user's namespace; `end` pushes once."""
    out = tmp_path / "tst-summarization"
    env = hub_env(fake_hub.url, tmp_path, stored=TOKEN)
    result = train(t5_model, corpus_files, out, env, "--push_to_hub", "--hub_strategy", "end")
    assert result.returncode == 0, result.stderr[-3000:]

    assert list(fake_hub.repos) == ["alice/tst-summarization"]
    assert fake_hub.commit_messages("alice/tst-summarization") == ["End of training"]
    repo = fake_hub.repos["alice/tst-summarization"]
    assert repo.files["model.safetensors"] == read(out / "model.safetensors")
    assert not any("checkpoint" in path for path in repo.files)
    assert_no_secret(result, fake_hub, out, env["HF_HOME"], skip={os.path.join(env["HF_HOME"], "token")})


def test_failed_upload_mid_run_then_final_push_lands(t5_model, corpus_files, tmp_path, fake_hub):
    """The hub fails the step-4 upload: training goes on, and the final push carries checkpoint-4."""
    fake_hub.fail_commits = {2}
    out = tmp_path / "out"
    env = hub_env(fake_hub.url, tmp_path, hf_token=TOKEN)
    result = train(
        t5_model,
        corpus_files,
        out,
        env,
        "--max_steps",
        "6",
        "--push_to_hub",
        "--hub_model_id",
        "flaky",
        "--hub_strategy",
        "all_checkpoints",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Push of step 4 to alice/flaky failed" in result.stderr

    repo = fake_hub.repos["alice/flaky"]
    assert fake_hub.commit_messages("alice/flaky") == [
        "Training in progress, step 2",
        "Training in progress, step 6",
        "End of training",
    ]
    assert "checkpoint-4/optimizer.pt" in repo.commits[-1].files  # retried with the final push
    for step in (2, 4, 6):
        assert repo.files[f"checkpoint-{step}/model.safetensors"] == read(
            out / f"checkpoint-{step}" / "model.safetensors"
        )
    assert repo.files["model.safetensors"] == read(out / "model.safetensors")
    assert json.loads(read(out / "train_results.json"))["train_loss"] > 0
    assert_no_secret(result, fake_hub, out, env["HF_HOME"])


def test_final_push_never_lands_local_output_complete(t5_model, corpus_files, tmp_path, fake_hub):
    fake_hub.fail_commits = set(range(1, 100))
    out = tmp_path / "out"
    env = hub_env(fake_hub.url, tmp_path, hf_token=TOKEN)
    result = train(t5_model, corpus_files, out, env, "--push_to_hub", "--hub_strategy", "end")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "seqtune: error: training finished and everything is in" in result.stderr
    assert "hf upload alice/out" in result.stderr and "Traceback" not in result.stderr
    assert fake_hub.commit_attempts == 3
    for name in ("model.safetensors", "config.json", "README.md", "train_results.json"):
        assert (out / name).is_file(), name
    assert json.loads(read(out / "seqtune_run.json"))["status"] == "finished"
    assert_no_secret(result, fake_hub, out)


def test_no_trainer_script_pushes_each_checkpoint_and_the_end(t5_model, corpus_files, tmp_path, fake_hub):
    """run_summarization_no_trainer.py --push_to_hub --hub_model_id --hub_token: the same pusher and card."""
    out = tmp_path / "out"
    env = hub_env(fake_hub.url, tmp_path)
    args = quick_args(
        t5_model,
        corpus_files,
        out,
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--max_eval_samples",
        "4",
        "--push_to_hub",
        "--hub_model_id",
        "loop-model",
        "--hub_token",
        TOKEN,
    )
    result = run_script(LOOP_SCRIPT, args, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    repo = fake_hub.repos["alice/loop-model"]
    assert fake_hub.commit_messages("alice/loop-model") == [
        "Training in progress, step 2",
        "Training in progress, step 4",
        "End of training",
    ]
    # Accelerate's checkpoints are not loadable models: they go whole under last-checkpoint/, for resuming.
    local = out / "step_4"  # the Hugging Face no_trainer script's name
    for name in os.listdir(local):
        assert repo.files[f"last-checkpoint/{name}"] == read(local / name), name
    assert not any(path.startswith(("step_", "checkpoint-", ".")) for path in repo.files)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "eval_results.json"):
        assert repo.files[name] == read(out / name), name
    card = repo.files["README.md"].decode()
    assert "Accelerate loop" in card and "# loop-model" in card and "| eval_rouge1 |" in card
    assert "--hub_token '<redacted>'" in card
    assert fake_hub.unknown == []
    assert_no_secret(result, fake_hub, out, env["HF_HOME"])


# --------------------------------------------------------------------------- fail early


@pytest.mark.parametrize(
    "case, flags, message",
    [
        ("unreachable", ["--hub_token", TOKEN], "cannot reach the Hub at http://127.0.0.1:"),
        ("bad token", ["--hub_token", BAD_TOKEN], "rejected the token from --hub_token (401"),
    ],
)
def test_script_fails_before_training(case, flags, message, t5_model, corpus_files, tmp_path, fake_hub):
    endpoint = f"http://127.0.0.1:{free_port()}" if case == "unreachable" else fake_hub.url
    out = tmp_path / "out"
    env = hub_env(endpoint, tmp_path)
    result = run_script(
        TRAINER_SCRIPT,
        quick_args(t5_model, corpus_files, out, "--do_train", "--max_steps", "2", "--push_to_hub", *flags),
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "seqtune: error: " in result.stderr and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not out.exists()  # checked before the output dir, the data or the model were touched
    assert fake_hub.commit_attempts == 0
    assert_no_secret(result, fake_hub, tmp_path)


# The start check on its own (seqtune.hub without the scripts, so without importing transformers):
# parsed flags in, exit 2 with the message out, as the scripts do.
CHECK = """
import json, sys
from types import SimpleNamespace
from seqtune.errors import exit_on_user_error
from seqtune.hub import HubPusher
loop_args, model_args = SimpleNamespace(**json.loads(sys.argv[1])), SimpleNamespace(**json.loads(sys.argv[2]))
print(exit_on_user_error(HubPusher.from_arguments(loop_args, model_args).check)())
"""


@pytest.mark.parametrize(
    "case, flags, model_token, env_extra, message",
    [
        ("read-only --token", {}, READ_TOKEN, {}, "the token from --token (user bob) is read-only"),
        ("no token", {}, None, {}, "none was found. Fix: run `hf auth login`, set HF_TOKEN, or pass --hub_token"),
        ("offline", {"hub_token": TOKEN}, None, {"HF_HUB_OFFLINE": "1"}, "offline mode is on"),
        (
            "foreign namespace",
            {"hub_token": TOKEN, "hub_model_id": "someone-else/model"},
            None,
            {},
            "cannot create or use the Hub repository someone-else/model as user alice",
        ),
        (
            "bad name",
            {"hub_token": TOKEN, "hub_model_id": "my model"},
            None,
            {},
            "--hub_model_id does not make a valid Hub repository name",
        ),
        ("read-only beaten by --hub_token", {"hub_token": TOKEN}, READ_TOKEN, {}, None),
    ],
)
def test_start_check_refuses(case, flags, model_token, env_extra, message, tmp_path, fake_hub):
    loop_args = {"push_to_hub": True, "output_dir": str(tmp_path / "out"), "hub_token": None} | flags
    env = dict(os.environ) | hub_env(fake_hub.url, tmp_path) | env_extra
    done = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(loop_args), json.dumps({"token": model_token})],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    if message is None:
        assert done.returncode == 0 and done.stdout.strip() == "alice/out", done.stderr
        return
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("seqtune: error: ") and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and fake_hub.repos == {}


# --------------------------------------------------------------------------- the card


def test_card_embeds_plot_and_names_hub_base_model(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    info = {
        "base_model": "google-t5/t5-small",
        "dataset": "cnn_dailymail (3.0.0)",
        "trainer": "Accelerate",
        "metrics": {"eval_rouge1": 41.5, "eval_runtime": 3.2, "predict_samples": 12, "train_loss": 1.25},
        "hyperparameters": {"learning_rate": 5e-05, "seed": 0, "max_steps": None},
        "source_prefix": None,
        "command": ["run_summarization_no_trainer.py", "--hub_token", "<redacted>"],
        "repo_id": "alice/t5-news",
    }
    card = render_model_card(str(out), info)
    assert "Training curve" not in card
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata == {
        "library_name": "transformers",
        "pipeline_tag": "summarization",
        "tags": ["summarization", "seqtune"],
        "base_model": "google-t5/t5-small",
    }
    assert "cnn_dailymail (3.0.0)" in card and "| eval_rouge1 | 41.5000 |" in card
    assert "- learning_rate: 5e-05\n" in card
    assert "| predict_samples | 12 |" in card and "eval_runtime" not in card and "max_steps" not in card
    assert "No source prefix." in card and 'tokenizer(text, return_tensors="pt"' in card

    (out / "plot_training_loss.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    card = render_model_card(str(out), info)
    assert "![Training loss](plot_training_loss.png)" in card


def test_hub_module_is_light_and_token_order(tmp_path, fake_hub):
    """Token order without the scripts: HF_TOKEN beats the stored log-in; an empty HF_TOKEN does not count."""
    code = (
        "from seqtune.hub import resolve_token; import sys; t, s = resolve_token(sys.argv[1] or None); "
        "print(s); print('transformers' in sys.modules)"
    )
    for hf_token, stored, flag, expected in (
        (TOKEN, BAD_TOKEN, "", "HF_TOKEN"),
        ("", TOKEN, "", "the stored log-in (hf auth login)"),
        (BAD_TOKEN, BAD_TOKEN, TOKEN, "--hub_token"),
    ):
        env = dict(os.environ) | hub_env(fake_hub.url, tmp_path, hf_token=hf_token, stored=stored)
        done = subprocess.run(
            [sys.executable, "-c", code, flag], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [expected, "False"]
