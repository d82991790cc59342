"""Evaluation and prediction with generation: one encoder pass, windows sorted by length,
results in input order, the same numbers as the plain way."""

from __future__ import annotations

import json

import torch
from conftest import quick_args
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq

from seqtune import generation
from seqtune.demo import synthetic_corpus, write_jsonl
from seqtune.generation import generate_with_loss, length_sorted_windows, restore_order
from seqtune.losses import example_loss_sums


def batch_of(model_dir, rows):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    features = [
        {
            "input_ids": tokenizer("summarize: " + r["document"])["input_ids"],
            "labels": tokenizer(text_target=r["summary"])["input_ids"],
        }
        for r in rows
    ]
    return tokenizer, model, DataCollatorForSeq2Seq(tokenizer, model=model)(features)


def test_one_encoder_pass_gives_the_same_loss_and_summaries(trap_model):
    tokenizer, model, batch = batch_of(trap_model, synthetic_corpus(6, seed=5))
    for beams in (1, 3):
        settings = {"max_length": 12, "num_beams": beams}
        generated, sums = generate_with_loss(model, batch, settings)
        plain = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **settings)
        with torch.no_grad():
            reference = example_loss_sums(model(**batch).logits, batch["labels"])
        assert torch.equal(generated, plain)
        assert torch.allclose(sums, reference, rtol=1e-5)


def test_windows_cover_every_index_once_longest_first():
    lengths = [5, 9, 1, 7, 3, 8, 2]
    windows = list(length_sorted_windows(lengths, window=3))
    assert windows == [[1, 0, 2], [5, 3, 4], [6]]
    assert restore_order(windows[0], ["b", "a", "c"]) == ["a", "b", "c"]


def test_predictions_are_written_in_input_order_across_windows(trap_model, tmp_path, isolated_hf_home, monkeypatch):
    """With windows of 4, the 11 test examples go through 3 sorted windows; every line must be the
    summary of its own input (the trap model's summaries differ from input to input). Batches of
    one, so that padding cannot change a summary and only the order is tested."""
    from seqtune.recipes.trainer import main

    rows = synthetic_corpus(40, seed=11)
    files = {
        "train": write_jsonl(str(tmp_path / "train.jsonl"), rows[:20]),
        "validation": write_jsonl(str(tmp_path / "validation.jsonl"), rows[20:29]),
        "test": write_jsonl(str(tmp_path / "test.jsonl"), rows[29:]),
    }
    monkeypatch.setattr(generation, "PREDICTION_WINDOW", 4)
    out = tmp_path / "out"
    results = main(
        quick_args(
            trap_model,
            files,
            out,
            "--do_predict",
            "--predict_with_generate",
            "--per_device_eval_batch_size",
            "1",
            "--generation_max_length",
            "12",
        )
    )
    lines = (out / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 11 and len(set(lines)) > 5

    tokenizer = AutoTokenizer.from_pretrained(trap_model)
    model = AutoModelForSeq2SeqLM.from_pretrained(trap_model).eval()
    for row, line in zip(rows[29:], lines):
        ids = tokenizer("summarize: " + row["document"], max_length=96, truncation=True, return_tensors="pt")
        alone = model.generate(**ids, max_length=12)
        assert tokenizer.decode(alone[0], skip_special_tokens=True).strip() == line
    assert results["predict_samples"] == 11 and "predict_rouge1" in results and "predict_loss" in results
    assert json.loads((out / "predict_results.json").read_text())["predict_samples"] == 11
