"""The transformers repository's own example tests for the two summarization scripts, run on seqtune.

`test_run_summarization` (examples/pytorch/test_pytorch_examples.py) and `test_run_summarization_no_trainer`
(examples/pytorch/test_accelerate_examples.py) as transformers has them: the same arguments, the scripts
imported from examples/pytorch/summarization and their `main()` called in-process with a patched
`sys.argv`, on the same ten-row XSum sample (tests/fixtures/tests_samples/xsum/sample.json, a relative
path resolved from the repository root). Two substitutions only: the local tiny T5 stands in for
t5-small (no network), and the ROUGE thresholds, which need a pretrained model, become "the key is there
and is a number in [0, 100]". Every other assertion holds as is.
"""

from __future__ import annotations

import json
import os
import sys
from unittest.mock import patch

import pytest
from conftest import REPO

SUMMARIZATION_DIR = os.path.join(REPO, "examples", "pytorch", "summarization")
XSUM_SAMPLE = "tests/fixtures/tests_samples/xsum/sample.json"  # relative, as in transformers' tests
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # about a minute for both on a CPU

ROUGE_KEYS = ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum")


def get_results(output_dir: str) -> dict:
    """transformers' helper: the run's all_results.json (it fails when the file is missing)."""
    path = os.path.join(output_dir, "all_results.json")
    if not os.path.exists(path):
        raise ValueError(f"can't find {path}")
    with open(path) as f:
        return json.load(f)


def assert_rouge_keys(result: dict) -> None:
    """Stands in for `assertGreaterEqual(result["eval_rouge1"], 10)` and the like (a random tiny model)."""
    for key in ROUGE_KEYS:
        assert key in result, f"{key} missing from all_results.json: {sorted(result)}"
        value = result[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert 0 <= value <= 100, (key, value)


@pytest.fixture()
def hf_example_env(monkeypatch, isolated_hf_home):
    """The scripts importable by name and the repository root as working directory, as in transformers."""
    monkeypatch.syspath_prepend(SUMMARIZATION_DIR)
    monkeypatch.chdir(REPO)
    assert os.path.isfile(XSUM_SAMPLE)


def test_run_summarization(hf_example_env, t5_model, tmp_path):
    import run_summarization

    tmp_dir = str(tmp_path / "out")
    testargs = f"""
        run_summarization.py
        --model_name_or_path {t5_model}
        --train_file {XSUM_SAMPLE}
        --validation_file {XSUM_SAMPLE}
        --output_dir {tmp_dir}
        --overwrite_output_dir
        --max_steps=50
        --warmup_steps=8
        --do_train
        --do_eval
        --learning_rate=2e-4
        --per_device_train_batch_size=2
        --per_device_eval_batch_size=1
        --predict_with_generate
        """.split()

    with patch.object(sys, "argv", testargs):
        run_summarization.main()
        result = get_results(tmp_dir)
        assert_rouge_keys(result)


def test_run_summarization_no_trainer(hf_example_env, t5_model, tmp_path):
    import run_summarization_no_trainer

    tmp_dir = str(tmp_path / "out")
    testargs = f"""
        run_summarization_no_trainer.py
        --model_name_or_path {t5_model}
        --train_file {XSUM_SAMPLE}
        --validation_file {XSUM_SAMPLE}
        --output_dir {tmp_dir}
        --max_train_steps=50
        --num_warmup_steps=8
        --learning_rate=2e-4
        --per_device_train_batch_size=2
        --per_device_eval_batch_size=1
        --checkpointing_steps epoch
        """.split()

    with patch.object(sys, "argv", testargs):
        run_summarization_no_trainer.main()
        result = get_results(tmp_dir)
        assert_rouge_keys(result)
        assert os.path.exists(os.path.join(tmp_dir, "epoch_0"))


# --------------------------------------------------------------------------- translation (issue 24)
# transformers' test_run_translation / test_run_translation_no_trainer: the tiny T5 stands in for
# sshleifer/student_marian_en_ro_6_1, "eval_bleu >= 30" becomes "eval_bleu is a score". Both pass
# --source_lang/--target_lang twice (en, then en_XX): the last wins, and en_XX's data key is en.
TRANSLATION_DIR = os.path.join(REPO, "examples", "pytorch", "translation")
WMT16_SAMPLE = "tests/fixtures/tests_samples/wmt16/sample.json"


def assert_bleu(result: dict) -> None:
    value = result["eval_bleu"]
    assert isinstance(value, (int, float)) and 0 <= value <= 100, value


def test_run_translation(hf_example_env, t5_model, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(TRANSLATION_DIR)
    import run_translation

    tmp_dir = str(tmp_path / "out")
    testargs = f"""
        run_translation.py
        --model_name_or_path {t5_model}
        --source_lang en
        --target_lang ro
        --train_file {WMT16_SAMPLE}
        --validation_file {WMT16_SAMPLE}
        --output_dir {tmp_dir}
        --overwrite_output_dir
        --max_steps=50
        --warmup_steps=8
        --do_train
        --do_eval
        --learning_rate=3e-3
        --per_device_train_batch_size=2
        --per_device_eval_batch_size=1
        --predict_with_generate
        --source_lang en_XX
        --target_lang ro_RO
        """.split()

    with patch.object(sys, "argv", testargs):
        run_translation.main()
        result = get_results(tmp_dir)
        assert_bleu(result)


def test_run_translation_no_trainer(hf_example_env, t5_model, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(TRANSLATION_DIR)
    import run_translation_no_trainer

    tmp_dir = str(tmp_path / "out")
    testargs = f"""
        run_translation_no_trainer.py
        --model_name_or_path {t5_model}
        --source_lang en
        --target_lang ro
        --train_file {WMT16_SAMPLE}
        --validation_file {WMT16_SAMPLE}
        --output_dir {tmp_dir}
        --max_train_steps=50
        --num_warmup_steps=8
        --num_beams=6
        --learning_rate=3e-3
        --per_device_train_batch_size=2
        --per_device_eval_batch_size=1
        --source_lang en_XX
        --target_lang ro_RO
        --checkpointing_steps epoch
        --with_tracking
        """.split()

    with patch.object(sys, "argv", testargs):
        run_translation_no_trainer.main()
        result = get_results(tmp_dir)
        assert_bleu(result)
        assert os.path.exists(os.path.join(tmp_dir, "epoch_0"))
        assert os.path.exists(os.path.join(tmp_dir, "translation_no_trainer"))
