"""xla_spawn.py and both summarization scripts on the CPU XLA device (PJRT_DEVICE=CPU).

These need torch_xla, which lives in its own environment: `make test-xla` builds .venv-xla
from requirements-xla.txt and runs this folder there. The main suite skips this module.
"""

from __future__ import annotations

import json
import os
import re

import pytest

pytest.importorskip("torch_xla", reason="torch_xla is not installed: `make test-xla` runs these tests in .venv-xla")

from conftest import LOOP_SCRIPT, REPO, TRAINER_SCRIPT, quick_args, run_script  # noqa: E402

from seqtune.checkpoints import list_checkpoints  # noqa: E402
from seqtune.demo import synthetic_corpus, write_jsonl  # noqa: E402

XLA_SPAWN = os.path.join(REPO, "examples", "pytorch", "xla_spawn.py")
ON_XLA_CPU = {"PJRT_DEVICE": "CPU"}


def spawn(num_cores: int, script: str, args: list[str], timeout: int = 600):
    return run_script(XLA_SPAWN, ["--num_cores", str(num_cores), script, *args], env=ON_XLA_CPU, timeout=timeout)


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def compilations(log: str) -> int:
    """The count seqtune logs at the end of a run on an XLA device."""
    counts = re.findall(r"XLA graph compilations: (\d+)", log)
    assert len(counts) == 1, log[-3000:]
    return int(counts[0])


def assert_ok(result):
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr


def test_trainer_script_trains_on_the_xla_device_through_xla_spawn(t5_model, corpus_files, tmp_path, isolated_hf_home):
    out = tmp_path / "xla"
    flags = [
        "--do_train",
        "--do_eval",
        "--predict_with_generate",
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--max_eval_samples",
        "8",
        "--val_max_target_length",
        "64",
    ]
    result = spawn(1, TRAINER_SCRIPT, quick_args(t5_model, corpus_files, out, *flags, "--do_predict"))
    assert_ok(result)
    log = result.stderr
    # The XLA settings: the plain AdamW (the fused one fails on XLA) and static shapes.
    assert "XLA device: --optim adamw_torch" in log
    assert "XLA device: padding every example to --max_source_length 96 / --max_target_length 24" in log
    # Graphs were compiled (the model ran on the XLA device), and few: transformers' generate() alone
    # would compile at each of the 63 decoding steps of every batch shape (3 here: eval 8, test 8 + 4).
    assert 0 < compilations(log) <= 30
    # The usual outputs, checkpoints included (written through the staging folder).
    names = set(os.listdir(out))
    for expected in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train_results.json",
        "eval_results.json",
        "predict_results.json",
        "all_results.json",
        "generated_predictions.txt",
        "trainer_state.json",
        "README.md",
        "seqtune_run.json",
    ):
        assert expected in names, f"{expected} missing from {sorted(names)}"
    assert [os.path.basename(path) for path in list_checkpoints(str(out))] == ["checkpoint-2", "checkpoint-4"]
    assert read_json(out / "seqtune_args.json")["pad_to_max_length"] is True
    results = read_json(out / "all_results.json")
    assert results["eval_samples"] == 8 and results["predict_samples"] == 12
    for key in ("train_loss", "eval_loss", "eval_rouge1", "eval_gen_len", "predict_rouge1"):
        assert key in results, key
    predictions = (out / "generated_predictions.txt").read_text(encoding="utf-8").split("\n")
    assert len(predictions) == 13  # one line per test example

    # The same run on the CPU without XLA (USE_TORCH_XLA=0) trains the same model: same losses.
    cpu = tmp_path / "cpu"
    reference = run_script(
        TRAINER_SCRIPT,
        quick_args(t5_model, corpus_files, cpu, *flags, "--pad_to_max_length"),
        env={"USE_TORCH_XLA": "0"},
    )
    assert_ok(reference)
    assert "XLA graph compilations" not in reference.stderr
    expected = read_json(cpu / "all_results.json")
    for key in ("train_loss", "eval_loss"):
        assert results[key] == pytest.approx(expected[key], rel=1e-3), key
    assert results["eval_gen_len"] == pytest.approx(expected["eval_gen_len"])


def test_accelerate_script_runs_on_the_xla_device(t5_model, corpus_files, tmp_path, isolated_hf_home):
    out = tmp_path / "loop"
    result = spawn(
        1,
        LOOP_SCRIPT,
        quick_args(
            t5_model,
            corpus_files,
            out,
            "--max_train_steps",
            "4",
            "--logging_steps",
            "1",
            "--val_max_target_length",
            "8",
            "--do_predict",
            "--max_eval_samples",
            "8",
            "--checkpointing_steps",
            "2",
        ),
    )
    assert_ok(result)
    assert re.search(r"on 1 process\(es\), device xla:0", result.stderr), result.stderr[-3000:]
    assert compilations(result.stderr) > 0
    results = read_json(out / "all_results.json")
    assert results["eval_samples"] == 8 and results["predict_samples"] == 12
    for key in ("train_loss", "eval_loss", "eval_rouge1", "predict_rouge1"):
        assert key in results, key
    for expected in ("model.safetensors", "tokenizer.json", "generated_predictions.txt", "README.md"):
        assert (out / expected).is_file(), expected
    assert [os.path.basename(path) for path in list_checkpoints(str(out))] == ["step_2", "step_4"]  # HF's names
    from transformers import AutoModelForSeq2SeqLM

    AutoModelForSeq2SeqLM.from_pretrained(str(out))  # the saved weights load back


def test_more_than_one_core_on_the_cpu_is_one_clear_error(t5_model, corpus_files, tmp_path):
    out = tmp_path / "out"
    result = spawn(2, TRAINER_SCRIPT, quick_args(t5_model, corpus_files, out, "--do_train"), timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "seqtune: error: --num_cores 2 with PJRT_DEVICE=CPU" in result.stderr
    assert "Fix: use --num_cores 1 on the CPU, or run on a TPU VM" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_a_script_that_xla_spawn_cannot_run_is_one_clear_error(tmp_path):
    missing = spawn(1, str(tmp_path / "nope.py"), [], timeout=120)
    assert (
        missing.returncode == 2
        and "seqtune: error: training script" in missing.stderr
        and "does not exist" in missing.stderr
    )
    script = tmp_path / "no_entry_point.py"
    script.write_text("def main():\n    pass\n")
    no_mp_fn = spawn(1, str(script), [], timeout=120)
    assert no_mp_fn.returncode == 2, no_mp_fn.stderr[-2000:]
    assert "has no _mp_fn(index) function" in no_mp_fn.stderr
    assert "Traceback" not in missing.stderr + no_mp_fn.stderr


def test_compilations_stay_bounded_with_varied_length_data(t5_model, tmp_path, isolated_hf_home):
    """Every training batch has another width (documents of 8 to 60 words, batches of 2), yet the
    graphs are compiled once: the count stays below the number of steps."""
    rows = synthetic_corpus(40, seed=5)
    for i, row in enumerate(rows):
        row["document"] = " ".join(row["document"].split()[: 8 + (i * 13) % 53])
    files = {split: write_jsonl(str(tmp_path / f"{split}.jsonl"), rows) for split in ("train", "validation", "test")}
    lengths = {len(row["document"].split()) for row in rows}
    assert len(lengths) > 30  # the data really varies in length
    steps = 16
    result = spawn(
        1,
        TRAINER_SCRIPT,
        quick_args(
            t5_model,
            files,
            tmp_path / "out",
            "--do_train",
            "--max_steps",
            str(steps),
            "--per_device_train_batch_size",
            "2",
            "--logging_steps",
            "4",
            "--save_strategy",
            "no",
        ),
    )
    assert_ok(result)
    count = compilations(result.stderr)
    assert 0 < count <= 10 < steps, f"{count} XLA graph compilations for {steps} training steps"


def test_translation_scripts_run_through_xla_spawn(t5_model, tmp_path, isolated_hf_home):
    """Issue 24: run_translation.py is the same recipe on another task; xla_spawn runs its own _mp_fn."""
    sample = os.path.join(REPO, "tests", "fixtures", "tests_samples", "wmt16", "sample.json")
    script = os.path.join(REPO, "examples", "pytorch", "translation", "run_translation.py")
    out = tmp_path / "xla-translation"
    args = [
        "--model_name_or_path", t5_model,
        "--train_file", sample,
        "--validation_file", sample,
        "--source_lang", "en",
        "--target_lang", "ro",
        "--source_prefix", "translate English to Romanian: ",
        "--output_dir", str(out),
        "--do_train",
        "--do_eval",
        "--predict_with_generate",
        "--max_steps", "2",
        "--per_device_train_batch_size", "2",
        "--max_source_length", "48",
        "--max_target_length", "16",
        "--report_to", "none",
    ]  # fmt: skip
    result = spawn(1, script, args)
    assert_ok(result)
    assert 0 < compilations(result.stderr)
    results = read_json(out / "all_results.json")
    assert results["eval_samples"] == 10 and 0 <= results["eval_bleu"] <= 100 and "eval_chrf" in results
