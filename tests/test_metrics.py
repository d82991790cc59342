"""ROUGE: seqtune's numbers equal rouge-score's on the same strings, with no download."""

from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from seqtune.metrics import generation_length, rouge, split_sentences

PREDICTIONS = [
    "The cat sat on the mat. It was happy.",
    "Stocks fell sharply on Monday! Investors worried about rates.",
    "A new bridge opens in Paris.",
]
REFERENCES = [
    "A cat was sitting on the mat. The cat seemed happy.",
    "Markets dropped on Monday as investors feared higher rates.",
    "Paris opens its new bridge? Officials said yes.",
]


def test_split_sentences_without_any_model():
    assert split_sentences('One. Two! Three? "Four." Five') == ["One.", "Two!", "Three?", '"Four."', "Five"]
    assert split_sentences("line one\nline two. more") == ["line one", "line two.", "more"]
    assert split_sentences("") == []


def test_rouge_matches_rouge_score_called_directly():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = dict.fromkeys(["rouge1", "rouge2", "rougeL", "rougeLsum"], 0.0)
    for prediction, reference in zip(PREDICTIONS, REFERENCES):
        scores = scorer.score("\n".join(split_sentences(reference)), "\n".join(split_sentences(prediction)))
        for key in expected:
            expected[key] += scores[key].fmeasure / len(PREDICTIONS) * 100
    ours = rouge(PREDICTIONS, REFERENCES)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-3)
    # rougeLsum really uses the sentence split: it differs from rougeL on multi-sentence text.
    assert ours["rougeLsum"] != ours["rougeL"]


def test_rouge_uses_stemming_and_bounds():
    assert rouge(["the cats are running"], ["the cat is running"])["rouge1"] == pytest.approx(75.0)
    assert rouge(["same text here"], ["same text here"]) == {
        k: 100.0 for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")
    }
    assert rouge(["completely different"], ["nothing shared"])["rouge1"] == 0.0


def test_generation_length_ignores_padding():
    assert generation_length([[0, 5, 6, 1, 0, 0], [0, 7, 1, 0, 0, 0]], pad_token_id=0) == 2.5
    assert generation_length([[0, 5, -100]], pad_token_id=0) == 1.0


def test_no_nltk_data_needed(monkeypatch, tmp_path):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])  # an empty nltk data folder
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("nltk.download must not be called"))
    assert rouge(PREDICTIONS, REFERENCES)["rougeLsum"] > 0
