"""The embedded default: `seqtune demo` learns, and says where its results are."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest


def test_demo_trains_a_tiny_model_that_clearly_improves(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "seqtune.cli", "demo", "--output_dir", str(out)],
        capture_output=True,  # bytes: text mode would turn a "\r" into "\n"
        timeout=600,
    )
    stdout, stderr = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    assert result.returncode == 0, stderr[-3000:]
    rows = dict(re.findall(r"^\s+(rouge1|rouge2|rougeL|rougeLsum)\s+([\d.]+\s+[\d.]+)$", stdout, re.M))
    assert set(rows) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}, stdout
    before, after = map(float, rows["rouge1"].split())
    assert after > before + 30, stdout
    run_dir = out / "run"
    assert str(run_dir) in stdout
    results = json.loads((run_dir / "all_results.json").read_text())
    assert abs(results["eval_rouge1"] - after) < 0.01
    assert len((run_dir / "generated_predictions.txt").read_text().splitlines()) == 100
    assert os.path.exists(run_dir / "model.safetensors")
    # The closing block says where the report is and how to use the model.
    assert f"report:      {run_dir / 'report.html'}" in stdout
    assert (run_dir / "report.html").exists()
    command = re.search(r"^\s+(seqtune summarize --model \S+ article\.txt)$", stdout, re.M)
    assert command and shlex.split(command.group(1))[3] == str(run_dir), stdout[-2000:]
    # A log, not a terminal: no tqdm bar redrawn with carriage returns (transformers' "Writing model
    # shards" while the base model is saved), and no token alignment warning (the model's config and
    # the tokenizer agree).
    assert "\r" not in stderr and "it/s]" not in stderr
    assert "PAD/BOS/EOS" not in stderr
    # The printed command works as shown.
    (tmp_path / "article.txt").write_text(
        "on monday the council of paris said it will open the old bridge . the work will cost 12 million .\n"
    )
    summarized = subprocess.run(
        [sys.executable, "-m", "seqtune.cli", *shlex.split(command.group(1))[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert summarized.returncode == 0, summarized.stderr[-2000:]
    row = json.loads(summarized.stdout)
    assert row["id"] == "article.txt" and "paris" in row["summary"], row


def test_translation_demo_trains_a_tiny_model_whose_bleu_rises(tmp_path):
    """`seqtune demo --task translation` at a small size: the made-up language pair is learned (BLEU and chrF
    rise), the data is nested translation JSON Lines, and the printed `seqtune translate` command works."""
    from seqtune.demo import pseudish_vocabulary

    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "seqtune.cli", "demo", "--task", "translation", "--output_dir", str(out)]
        + ["--train_examples", "1000"],
        capture_output=True,
        timeout=600,
    )
    stdout, stderr = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    assert result.returncode == 0, stderr[-3000:]
    assert "English to Pseudish" in stdout
    rows = dict(re.findall(r"^\s+(bleu|chrf)\s+([\d.]+\s+[\d.]+)$", stdout, re.M))
    assert set(rows) == {"bleu", "chrf"}, stdout
    (bleu_before, bleu_after), (chrf_before, chrf_after) = (map(float, rows[key].split()) for key in ("bleu", "chrf"))
    assert bleu_after > bleu_before + 20 and chrf_after > chrf_before + 20, stdout
    run_dir = out / "run"
    results = json.loads((run_dir / "all_results.json").read_text())
    assert abs(results["eval_bleu"] - bleu_after) < 0.01
    first = json.loads((out / "data" / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"translation"} and set(first["translation"]) == {"en", "ps"}
    settings = json.loads((run_dir / "config.json").read_text())["task_specific_params"]["translation"]
    assert (settings["source_lang"], settings["target_lang"]) == ("en", "ps")
    card = (run_dir / "README.md").read_text()
    assert "model.generate(**inputs)" in card and "seqtune translate" in card
    command = re.search(r"^\s+(seqtune translate --model \S+ --lines sentences\.txt)$", stdout, re.M)
    assert command and shlex.split(command.group(1))[3] == str(run_dir), stdout[-2000:]
    assert "\r" not in stderr

    sentence = "on monday the bank of oslo will close the old park ."
    (tmp_path / "sentences.txt").write_text(sentence + "\n")
    translated = subprocess.run(
        [sys.executable, "-m", "seqtune.cli", *shlex.split(command.group(1))[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert translated.returncode == 0, translated.stderr[-2000:]
    row = json.loads(translated.stdout)
    words = row["translation"].split()
    assert row["id"] == "sentences.txt:1" and words[-1] == ".", row
    # Written in Pseudish: (nearly) every word is the Pseudish form of some English word, none is English.
    assert sum(word in set(pseudish_vocabulary()) for word in words) >= len(words) - 2, row
    assert not set(words[:-1]) & set(sentence.split()), row


def test_synthetic_pair_maps_words_and_moves_the_verb_to_the_end():
    from seqtune.demo import build_tokenizer, pseudish_vocabulary, pseudish_word, synthetic_pairs

    assert pseudish_word("paris") == "sorepa" and pseudish_word(".") == "." and pseudish_word("12") == "12"
    pairs = synthetic_pairs(200, seed=1)
    assert pairs == synthetic_pairs(200, seed=1)  # deterministic
    for pair in pairs:
        source, target = pair["translation"]["en"].split(), pair["translation"]["ps"].split()
        assert len(source) == len(target) and source[-1] == target[-1] == "."
        verb = next(word for word in source if pseudish_word(word) == target[-2])  # the last word before the .
        moved = [word for word in source if word != verb]
        assert target == [pseudish_word(word) for word in moved[:-1]] + [pseudish_word(verb), "."]
    tokenizer = build_tokenizer(pseudish_vocabulary())
    words = {word for pair in pairs for text in pair["translation"].values() for word in text.split()}
    assert tokenizer.unk_token_id not in tokenizer(" ".join(sorted(words)))["input_ids"]  # every word is known


def test_cli_lists_its_commands():
    result = subprocess.run(
        [sys.executable, "-m", "seqtune.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "demo" in result.stdout and "train" in result.stdout


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_demo_model_and_tokenizer_agree_on_special_tokens(kind, tmp_path, capfd):
    """Built, saved and loaded as the demo and the tests do, the model's config and generation config
    already hold the tokenizer's PAD/BOS/EOS: the Trainer has nothing to align and does not warn."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.trainer_utils import align_special_tokens

    from seqtune.demo import make_base_model

    folder = make_base_model(str(tmp_path / kind), kind=kind)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    capfd.readouterr()
    before = {name: getattr(model.config, name) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}
    align_special_tokens(model, tokenizer)  # what Trainer.train() does first
    after = {name: getattr(model.config, name) for name in before}
    assert after == before == {"pad_token_id": 0, "bos_token_id": 3, "eos_token_id": 1}
    assert model.generation_config.bos_token_id == 3 and model.generation_config.pad_token_id == 0
    inputs = tokenizer(["summarize: on monday the bank of oslo said it will sell the old park ."], return_tensors="pt")
    generated = model.generate(**inputs, max_length=6)
    assert generated.shape[0] == 1
    assert "PAD/BOS/EOS" not in capfd.readouterr().err
