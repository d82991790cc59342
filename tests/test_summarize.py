"""`seqtune summarize`: the model's saved prefix, every input kind, input order, clear errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO, TRAINER_SCRIPT, quick_args, run_script

from seqtune.arguments import DataArguments
from seqtune.modeling import remember_task_settings
from seqtune.summarize import main

PREFIX = "summarize: "


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, t5_model, corpus_files):
    """The output dir of a real (short) training run."""
    out = tmp_path_factory.mktemp("summarize") / "run"
    result = run_script(
        TRAINER_SCRIPT, quick_args(t5_model, corpus_files, out, "--do_train", "--max_steps", "2", "--save_steps", "2")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def copying_model(tmp_path_factory, t5_model):
    """The tiny random T5 with special tokens suppressed in generation, so that every summary is
    made of words and depends on its input; its settings stored by the core function the scripts call."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("summarize") / "model"
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_model)
    model.generation_config.suppress_tokens = [0, 1, 2, 3]
    remember_task_settings(model, DataArguments(source_prefix=PREFIX, max_source_length=64, max_target_length=6))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(t5_model).save_pretrained(folder)
    return str(folder)


def one_by_one(model_dir: str, texts: list[str], prefix: str) -> list[str]:
    """Reference summaries: each text alone, no batching, no padding."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    summaries = []
    for text in texts:
        encoded = tokenizer(prefix + text, truncation=True, max_length=64, return_tensors="pt")
        generated = model.generate(**encoded, max_length=6)
        summaries.append(" ".join(tokenizer.decode(generated[0], skip_special_tokens=True).split()))
    return summaries


def summarize(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def run_cli(*argv, stdin: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SEQTUNE_PROGRESS="")
    return subprocess.run(
        [sys.executable, "-m", "seqtune.cli", "summarize", *map(str, argv)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )


def test_training_saves_the_prefix_with_the_model_and_summarize_reads_stdin(trained_dir):
    expected = {"prefix": PREFIX, "max_source_length": 96, "max_length": 24}
    for folder in (trained_dir, trained_dir / "checkpoint-2"):
        config = json.loads((folder / "config.json").read_text())
        assert config["task_specific_params"]["summarization"] == expected

    result = run_cli("--model", trained_dir, stdin="on monday the bank of oslo said it will close the old park .\n")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["id"] == "stdin"
    assert "prefix 'summarize: '" in result.stderr and "inputs up to 96 tokens" in result.stderr
    assert "Summarizing: 1/1 docs (100%)" in result.stderr and "\r" not in result.stderr


def test_every_input_kind_in_input_order_batched_by_length(copying_model, corpus_files, tmp_path):
    rows = [json.loads(line) for line in open(corpus_files["test"], encoding="utf-8")]
    (tmp_path / "a.txt").write_text(rows[0]["document"] + "\n", encoding="utf-8")
    (tmp_path / "b.md").write_text(rows[1]["document"], encoding="utf-8")
    with open(tmp_path / "docs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "article"])
        writer.writerows([[f"n{i}", row["document"]] for i, row in enumerate(rows[2:5])])
    pd.DataFrame({"document": [row["document"] for row in rows[5:8]], "key": ["x", "y", "z"]}).to_parquet(
        tmp_path / "docs.parquet"
    )
    out = tmp_path / "summaries.jsonl"

    count = summarize(
        "--model",
        copying_model,
        "--batch_size",
        3,
        "--output",
        out,
        tmp_path / "a.txt",
        tmp_path / "b.md",
        corpus_files["test"],
        tmp_path / "docs.csv",
        tmp_path / "docs.parquet",
    )
    assert count == 2 + 12 + 3 + 3
    results = read_jsonl(out)
    test_file = corpus_files["test"]
    assert [r["id"] for r in results] == (
        [str(tmp_path / "a.txt"), str(tmp_path / "b.md")]
        + [f"{test_file}:{n}" for n in range(1, 13)]
        + [f"{tmp_path / 'docs.csv'}:{n}" for n in range(1, 4)]
        + [f"{tmp_path / 'docs.parquet'}:{n}" for n in range(1, 4)]
    )
    texts = (
        [rows[0]["document"], rows[1]["document"]]
        + [row["document"] for row in rows]
        + [row["document"] for row in rows[2:8]]
    )
    summaries = [r["summary"] for r in results]
    assert summaries == one_by_one(copying_model, texts, PREFIX)  # same as each text alone, same order
    assert len(set(summaries)) > 3  # the summaries depend on the text, so a mix-up would show
    assert summaries != one_by_one(copying_model, texts, "")  # and on the saved prefix, which was applied


def test_lines_text_format_id_column_and_overrides(copying_model, tmp_path, capsys, caplog):
    notes = tmp_path / "notes.txt"
    notes.write_text(
        "on monday the bank of oslo said it will close the old park .\n\n"
        "on friday the museum of rome said it will open the old tower .\n",
        encoding="utf-8",
    )
    assert summarize("--model", copying_model, "--lines", notes) == 2
    ids = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert ids == [f"{notes}:1", f"{notes}:3"]

    table = tmp_path / "rows.jsonl"
    table.write_text(
        "".join(json.dumps({"key": k, "text": t}) + "\n" for k, t in [("k1", "oslo bank ."), ("k2", "rome museum .")])
    )
    assert summarize("--model", copying_model, "--id_column", "key", table) == 2
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ["k1", "k2"]

    assert summarize("--model", copying_model, "--format", "text", "--max_length", 3, "--num_beams", 2, table) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and all(len(line.split()) == 2 for line in lines)  # 3 tokens: start + 2 words
    assert "generation {'max_length': 3, 'num_beams': 2}" in caplog.text


def test_bad_input_gets_a_clear_message(copying_model, trained_dir, tmp_path, capsys):
    def error(*argv) -> str:
        assert summarize("--model", copying_model, *argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("seqtune: error: ") and "Traceback" not in err
        return err

    two_columns = tmp_path / "two.csv"
    two_columns.write_text("title,words\nx,some text\n", encoding="utf-8")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": "cut\n', encoding="utf-8")
    empty_row = tmp_path / "empty.jsonl"
    empty_row.write_text('{"text": "fine"}\n{"text": "  "}\n', encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 ol\xe9".encode("latin-1"))
    (tmp_path / "blank.txt").write_text("  \n", encoding="utf-8")

    assert "no such file" in error(tmp_path / "missing.txt")
    assert "is a folder" in error(tmp_path)
    assert "line 2, column" in error(broken)
    assert "which one holds the text" in error(two_columns) and "title, words" in error(two_columns)
    assert "is not a column" in error("--text_column", "summary", two_columns)
    assert "row 2" in error(empty_row)
    assert "not valid UTF-8" in error(latin)
    assert "is empty" in error(tmp_path / "blank.txt")
    assert "at least 1" in error("--batch_size", 0, latin)
    assert summarize("--model", tmp_path / "no-model", latin) == 2
    assert "no such folder" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained_dir / "checkpoint-2", unfinished / "checkpoint-2")  # a run stopped before its end
    assert summarize("--model", unfinished, latin) == 2
    err = capsys.readouterr().err
    assert (
        "holds no saved model" in err
        and f"Fix: pass its newest checkpoint, --model {unfinished / 'checkpoint-2'}" in err
    )
