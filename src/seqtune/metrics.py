"""Scores computed offline: ROUGE for summaries, sacreBLEU's BLEU and chrF for translations.

ROUGE: rouge-score with stemming. The Hugging Face scripts split sentences for rougeLsum with
`nltk.sent_tokenize`, which needs `nltk.download("punkt")` at run time and so fails on offline
clusters. seqtune splits on sentence-ending punctuation (and existing line breaks) instead;
scores are the mean F-measure over examples, times 100.

BLEU and chrF: sacreBLEU's corpus scores with its default tokenizer (13a), as the Hugging Face
translation scripts report them through `evaluate.load("sacrebleu")`, without the download.
"""

from __future__ import annotations

import re

import numpy as np
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A sentence ends at . ! or ? (optionally followed by closing quotes/brackets) before
# white space and the next sentence's first character.
_SENTENCE_BOUNDARY = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=\S)")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences without any model or download."""
    sentences = []
    for line in text.splitlines():
        sentences.extend(part.strip() for part in _SENTENCE_BOUNDARY.split(line) if part.strip())
    return sentences


def _for_rouge_lsum(text: str) -> str:
    # rouge-score's rougeLsum treats newlines as sentence boundaries.
    return "\n".join(split_sentences(text.strip()))


_scorer = None


def _get_scorer():
    global _scorer
    if _scorer is None:
        _scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return _scorer


class Scorer:
    """A task's scores accumulated batch by batch, plus the mean generation length (`gen_len`).

    A task's scorer says what `scores` are (`names`), how a batch is added (`add_texts`) and
    what they come to (`scores`); `result` adds `gen_len`.
    """

    names: tuple[str, ...] = ()

    def __init__(self):
        self.count = 0
        self.generated_tokens = 0.0

    def add(self, predictions: list[str], references: list[str], generated_ids=None, pad_token_id: int | None = None):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        self.add_texts(predictions, references)
        self.count += len(predictions)
        if generated_ids is not None and len(predictions):
            self.generated_tokens += generation_length(generated_ids, pad_token_id) * len(predictions)

    def add_texts(self, predictions: list[str], references: list[str]) -> None:
        raise NotImplementedError

    def scores(self) -> dict[str, float]:
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        """The task's scores and the mean generation length (`gen_len`)."""
        return {**self.scores(), "gen_len": round(self.generated_tokens / max(self.count, 1), 4)}


class SummaryScorer(Scorer):
    """Mean ROUGE F-measures; memory flat in the number of examples."""

    names = ROUGE_TYPES

    def __init__(self):
        super().__init__()
        self.totals = dict.fromkeys(ROUGE_TYPES, 0.0)

    def add_texts(self, predictions: list[str], references: list[str]) -> None:
        scorer = _get_scorer()
        for prediction, reference in zip(predictions, references):
            scores = scorer.score(_for_rouge_lsum(reference), _for_rouge_lsum(prediction))
            for name in ROUGE_TYPES:
                self.totals[name] += scores[name].fmeasure

    def scores(self) -> dict[str, float]:
        """Mean ROUGE F-measures x100, 4 decimals."""
        return {name: round(100 * total / max(self.count, 1), 4) for name, total in self.totals.items()}


class TranslationScorer(Scorer):
    """sacreBLEU's corpus BLEU and chrF, from their sentence statistics (n-gram matches, lengths) added up
    batch by batch: sacreBLEU sums the same statistics over the corpus, so the scores are its corpus scores,
    and memory stays flat in the number of sentences."""

    names = ("bleu", "chrf")

    def __init__(self):
        import sacrebleu

        super().__init__()
        self.metrics = {"bleu": sacrebleu.BLEU(), "chrf": sacrebleu.CHRF()}
        self.totals: dict[str, list[int] | None] = dict.fromkeys(self.metrics)

    def add_texts(self, predictions: list[str], references: list[str]) -> None:
        if not predictions:
            return
        for name, metric in self.metrics.items():
            # The statistics corpus_score sums (sacrebleu.metrics.base.Metric), one list per sentence.
            for sentence in metric._extract_corpus_statistics(predictions, [references]):
                total = self.totals[name]
                self.totals[name] = list(sentence) if total is None else [a + b for a, b in zip(total, sentence)]

    def scores(self) -> dict[str, float]:
        return {
            name: round(metric._compute_score_from_stats(self.totals[name]).score, 4)
            if self.totals[name] is not None
            else 0.0
            for name, metric in self.metrics.items()
        }


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F-measures (x100, 4 decimals) of predictions against references."""
    scorer = SummaryScorer()
    scorer.add(predictions, references)
    return scorer.scores()


def decode_token_ids(token_ids, tokenizer) -> list[str]:
    """Decode generated or label ids; -100 (ignored labels, gather padding) counts as padding."""
    token_ids = np.asarray(token_ids)
    token_ids = np.where(token_ids < 0, tokenizer.pad_token_id, token_ids)
    return [text.strip() for text in tokenizer.batch_decode(token_ids, skip_special_tokens=True)]


def generation_length(token_ids, pad_token_id: int) -> float:
    """Mean number of non-padding tokens per generated sequence."""
    token_ids = np.asarray(token_ids)
    if token_ids.size == 0:
        return 0.0
    return float(np.mean(np.sum((token_ids != pad_token_id) & (token_ids >= 0), axis=-1)))


def score_generated(generated_ids, label_ids, tokenizer, scorer: Scorer) -> dict[str, float]:
    """A task's scores and the mean generation length of generated ids against label ids."""
    scorer.add(
        decode_token_ids(generated_ids, tokenizer),
        decode_token_ids(label_ids, tokenizer),
        generated_ids,
        tokenizer.pad_token_id,
    )
    return scorer.result()
