"""Test worlds built locally: tiny models, tokenizers and data files. Nothing touches the network."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# No test may reach the hub; transformers and datasets fail fast instead of hanging.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from seqtune.demo import make_base_model, make_corpus_files, synthetic_corpus, write_jsonl  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER_SCRIPT = os.path.join(REPO, "examples", "pytorch", "summarization", "run_summarization.py")
LOOP_SCRIPT = os.path.join(REPO, "examples", "pytorch", "summarization", "run_summarization_no_trainer.py")


@pytest.fixture(scope="session")
def t5_model(tmp_path_factory) -> str:
    """A random tiny T5 with its word-level tokenizer, saved to a folder."""
    return make_base_model(str(tmp_path_factory.mktemp("models") / "tiny-t5"), kind="t5")


@pytest.fixture(scope="session")
def bart_model(tmp_path_factory) -> str:
    return make_base_model(str(tmp_path_factory.mktemp("models") / "tiny-bart"), kind="bart")


@pytest.fixture(scope="session")
def corpus_files(tmp_path_factory) -> dict:
    """Small train/validation/test JSON Lines files with columns document/summary."""
    return make_corpus_files(str(tmp_path_factory.mktemp("corpus")), train=64, validation=16, test=12)


@pytest.fixture()
def isolated_hf_home(tmp_path, monkeypatch) -> str:
    """A fresh HF cache for the test (datasets' tokenization cache included)."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    return str(home)


def quick_args(model: str, files: dict, output_dir, *extra: str) -> list[str]:
    """Flags for a run of a few steps on the tiny world."""
    return [
        "--model_name_or_path", model,
        "--train_file", files["train"],
        "--validation_file", files["validation"],
        "--test_file", files["test"],
        "--source_prefix", "summarize: ",
        "--output_dir", str(output_dir),
        "--max_source_length", "96",
        "--max_target_length", "24",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8",
        "--learning_rate", "1e-3",
        "--report_to", "none",
        "--seed", "0",
        *extra,
    ]


def run_script(script: str, args: list[str], launcher: list[str] | None = None, env: dict | None = None,
               timeout: int = 600, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run a script in a real subprocess (optionally through a launcher such as torchrun)."""
    command = (launcher or [sys.executable]) + [script] + [str(a) for a in args]
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd)


__all__ = ["quick_args", "run_script", "synthetic_corpus", "write_jsonl", "TRAINER_SCRIPT", "LOOP_SCRIPT", "REPO"]
