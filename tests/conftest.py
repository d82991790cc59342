"""Test worlds built locally: tiny models, tokenizers and data files. Nothing touches the network."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pandas as pd
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
def dropout_model(t5_model, tmp_path_factory) -> str:
    """The tiny T5 with dropout on: a resumed run must restore the RNG to match bit for bit."""
    import json

    folder = str(tmp_path_factory.mktemp("models") / "tiny-t5-dropout")
    shutil.copytree(t5_model, folder)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    config["dropout_rate"] = 0.2
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    return folder


@pytest.fixture(scope="session")
def bart_model(tmp_path_factory) -> str:
    return make_base_model(str(tmp_path_factory.mktemp("models") / "tiny-bart"), kind="bart")


UNKNOWN_WORD = "zzyzx"  # not in the tiny tokenizer's vocabulary: it becomes <unk>


@pytest.fixture(scope="session")
def trap_model(tmp_path_factory) -> str:
    """A tiny BART with two properties tests rely on, both deterministic on any machine.

    - Larger random weights: its greedy summaries differ from input to input, so a test can
      tell whether predictions come back in input order.
    - The encoder has its own embedding (the decoder's stays tied to the output layer), in
      which <unk> is inf: an input holding a word outside the vocabulary (UNKNOWN_WORD) makes
      the loss NaN at exactly the step that example is trained on, while every other input
      trains normally. Every parameter takes part in the loss (DDP requires it).
    """
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    from seqtune.demo import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer()
    config = build_tiny_model(tokenizer, kind="bart").config.to_dict()
    config.update(init_std=0.2)
    torch.manual_seed(0)
    model = BartForConditionalGeneration(BartConfig(**config))
    encoder_embedding = torch.nn.Embedding.from_pretrained(
        model.model.shared.weight.detach().clone(), freeze=False, padding_idx=0
    )
    with torch.no_grad():
        encoder_embedding.weight[tokenizer.unk_token_id] = float("inf")
    model.model.encoder.embed_tokens = encoder_embedding  # saved apart, so it loads untied
    model.generation_config.max_length = 16
    model.generation_config.num_beams = 1
    folder = str(tmp_path_factory.mktemp("models") / "trap-bart")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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
        "--model_name_or_path",
        model,
        "--train_file",
        files["train"],
        "--validation_file",
        files["validation"],
        "--test_file",
        files["test"],
        "--source_prefix",
        "summarize: ",
        "--output_dir",
        str(output_dir),
        "--max_source_length",
        "96",
        "--max_target_length",
        "24",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "8",
        "--learning_rate",
        "1e-3",
        "--report_to",
        "none",
        "--seed",
        "0",
        *extra,
    ]


def run_script(
    script: str,
    args: list[str],
    launcher: list[str] | None = None,
    env: dict | None = None,
    timeout: int = 270,
    cwd: str | None = None,
) -> subprocess.CompletedProcess:
    """Run a script in a real subprocess (optionally through a launcher such as torchrun).

    The default timeout stays under the tests' own 300 s limit, so a hung run fails with its output shown.
    """
    command = (launcher or [sys.executable]) + [script] + [str(a) for a in args]
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONFAULTHANDLER", "1")  # a crash in native code (SIGSEGV) prints the Python stack
    full_env.update(env or {})
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout, env=full_env, cwd=cwd)
    except subprocess.TimeoutExpired as hung:
        output = (hung.stderr or b"").decode("utf-8", "replace")[-4000:]
        pytest.fail(f"{shlex.join(command)} ran past {timeout} s; the end of its stderr:\n{output}")
    # Decoded without newline translation (text=True turns every "\r" into "\n"): tests look for
    # carriage returns in logs that are not a terminal.
    result.stdout = result.stdout.decode("utf-8", "replace")
    result.stderr = result.stderr.decode("utf-8", "replace")
    return result


def assert_summarizes(model_dir, tmp_path) -> None:
    """`seqtune summarize --model MODEL_DIR` on one article: exit 0 and a summary (the saved model loads and
    generates outside the run that wrote it)."""
    text = tmp_path / "article.txt"
    text.write_text("the city council approved the new budget on monday after a long debate .\n")
    command = [sys.executable, "-m", "seqtune.cli", "summarize", "--model", str(model_dir), str(text)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[0])["summary"] is not None


def free_port() -> int:
    """A TCP port free on loopback right now (for fake servers and torchrun rendezvous).

    Drawn below Linux's ephemeral range (32768-60999), not with bind(0): a port from that range, once
    released, can be taken by any outgoing connection (the other test worker's torchrun ranks open
    many) before the server that asked for it binds it; a torchrun rendezvous hung that way in CI.
    """
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port between 20000 and 32000 on 127.0.0.1")


def torchrun(nproc_per_node: int = 2, *rendezvous: str) -> list[str]:
    """The torchrun command for one node; by default a single node on a free loopback port.

    Never the default port 29500: parallel tests (pytest -n) would collide there.
    """
    executable = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [executable] if os.path.exists(executable) else [sys.executable, "-m", "torch.distributed.run"]
    if not rendezvous:
        rendezvous = ("--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(free_port()))
    return command + ["--nproc_per_node", str(nproc_per_node), *rendezvous]


# ---- offline stand-ins for the hub: a data set folder and a model cache laid out like the hub's


def write_hub_layout(root, name, rows_by_split, config="3.0.0"):
    """A local data set folder laid out like the hub's: README with configs, parquet splits."""
    folder = root / name
    (folder / config).mkdir(parents=True)
    for split, rows in rows_by_split.items():
        pd.DataFrame(rows).to_parquet(folder / config / f"{split}-00000-of-00001.parquet")
    files = "\n".join(f"  - split: {split}\n    path: {config}/{split}-*.parquet" for split in rows_by_split)
    (folder / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {config}\n  data_files:\n{files}\n---\n# {name}\n"
    )
    return folder


def cnn_rows(count, seed):
    return [
        {"article": r["document"], "highlights": r["summary"], "id": str(i)}
        for i, r in enumerate(synthetic_corpus(count, seed=seed))
    ]


def put_in_hf_cache(hf_home, repo_id, source_folder):
    """Lay out a saved model as the hub cache does, so `--model_name_or_path repo_id` loads offline."""
    revision = "0" * 40
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(source_folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)


__all__ = [
    "cnn_rows",
    "put_in_hf_cache",
    "write_hub_layout",
    "quick_args",
    "run_script",
    "synthetic_corpus",
    "write_jsonl",
    "TRAINER_SCRIPT",
    "LOOP_SCRIPT",
    "REPO",
    "UNKNOWN_WORD",
    "free_port",
    "torchrun",
]
