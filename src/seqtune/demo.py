"""The embedded default: a tiny model, a tokenizer and a synthetic corpus, built here.

Nothing is downloaded. The tests build their worlds with the same functions, so what
`seqtune demo` shows is what the suite proves.

The corpus is news-like: each document opens with a lead sentence naming who does what
where, followed by a varying number of filler sentences; the summary restates the lead
in a fixed form. A model must learn to copy the right words out of the lead, which a
tiny model does in a few hundred steps on a CPU.

`seqtune demo --task translation` uses a synthetic language pair instead: English sentences
from the same word lists and their translation into a made-up language (`synthetic_pair`).
"""

from __future__ import annotations

import json
import os
import random
import shlex
from dataclasses import dataclass

from .errors import exit_on_user_error

CITIES = [
    "paris",
    "berlin",
    "madrid",
    "lisbon",
    "vienna",
    "prague",
    "oslo",
    "dublin",
    "athens",
    "rome",
    "warsaw",
    "zurich",
    "brussels",
    "helsinki",
    "budapest",
    "geneva",
]
GROUPS = [
    "council",
    "ministry",
    "union",
    "university",
    "company",
    "hospital",
    "museum",
    "orchestra",
    "police",
    "airport",
    "library",
    "bank",
]
ACTIONS = ["open", "close", "build", "sell", "repair", "expand", "move", "rename", "fund", "inspect"]
OBJECTS = [
    "bridge",
    "station",
    "school",
    "park",
    "tower",
    "market",
    "stadium",
    "harbour",
    "theatre",
    "factory",
    "garden",
    "tunnel",
]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
FILLER_SUBJECTS = [
    "local residents",
    "critics",
    "supporters",
    "engineers",
    "visitors",
    "reporters",
    "students",
    "shop owners",
    "neighbours",
    "officials",
]
FILLER_VERBS = ["welcomed", "questioned", "discussed", "praised", "criticised", "studied", "described", "debated"]
FILLER_OBJECTS = [
    "the cost",
    "the timetable",
    "the design",
    "the noise",
    "the traffic",
    "the budget",
    "the weather",
    "the delay",
    "the plan",
    "the vote",
]
FILLER_TAILS = [
    "on the radio",
    "at a meeting",
    "in a letter",
    "on social media",
    "during the week",
    "in the evening",
    "near the square",
    "after lunch",
]

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<s>"]  # ids 0..3: T5's pad/eos/unk, plus a bos for BART


def synthetic_example(rng: random.Random, filler_range: tuple[int, int] = (1, 6), mentions: bool = False) -> dict:
    """One news-like example. With `mentions`, about half of the filler sentences mention the
    story's subject again (as news articles do), so a long document says what it is about in
    more than one place."""
    city, group, action, thing, day = (
        rng.choice(CITIES),
        rng.choice(GROUPS),
        rng.choice(ACTIONS),
        rng.choice(OBJECTS),
        rng.choice(DAYS),
    )
    cost = rng.randint(2, 99)
    lead = f"on {day} the {group} of {city} said it will {action} the old {thing} ."

    def filler() -> str:
        subject, verb = rng.choice(FILLER_SUBJECTS), rng.choice(FILLER_VERBS)
        if mentions and rng.random() < 0.5:
            topic = rng.choice(
                [
                    f"the plan of the {city} {group}",
                    f"the plan to {action} the {thing}",
                    f"the {cost} million for the {thing}",
                ]
            )
            return f"{subject} {verb} {topic} {rng.choice(FILLER_TAILS)} ."
        return f"{subject} {verb} {rng.choice(FILLER_OBJECTS)} {rng.choice(FILLER_TAILS)} ."

    fillers = [filler() for _ in range(rng.randint(*filler_range))]
    middle = f"the work will cost {cost} million ."
    position = rng.randint(0, len(fillers))
    body = fillers[:position] + [middle] + fillers[position:]
    document = " ".join([lead] + body)
    summary = f"{city} {group} to {action} {thing} for {cost} million ."
    return {"document": document, "summary": summary}


def synthetic_corpus(
    size: int, seed: int = 0, filler_range: tuple[int, int] = (1, 6), mentions: bool = False
) -> list[dict]:
    """`size` examples; each document has between filler_range[0] and filler_range[1] filler
    sentences (about 9 tokens each), so filler_range=(10, 165) gives news-like lengths of ~100 to ~1,500 tokens."""
    rng = random.Random(seed)
    return [synthetic_example(rng, filler_range, mentions) for _ in range(size)]


def corpus_vocabulary() -> list[str]:
    words = set()
    for group in (CITIES, GROUPS, ACTIONS, OBJECTS, DAYS, FILLER_SUBJECTS, FILLER_VERBS, FILLER_OBJECTS, FILLER_TAILS):
        for phrase in group:
            words.update(phrase.split())
    words.update("on the of said it will old . work cost million to for summarize : , ! ? a an and".split())
    words.update(str(n) for n in range(100))
    return sorted(words)


def build_tokenizer(extra_words: list[str] | None = None):
    """A word-level fast tokenizer (lower-cased, punctuation split off) that appends </s>."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = corpus_vocabulary() + sorted(set(extra_words or []) - set(corpus_vocabulary()))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    model = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    model.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    model.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    from tokenizers import decoders

    model.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        model_max_length=4096,
    )


# Model shapes by size: tiny trains in seconds on a CPU; t5-small has the shapes of Google's
# t5-small (60M parameters, its 32,128-token vocabulary), for GPU benchmarks.
MODEL_SIZES = {
    "tiny": {"width": 64, "layers": 2, "heads": 4, "ffn": 128, "buckets": 16, "vocab": None},
    "small": {"width": 256, "layers": 4, "heads": 4, "ffn": 512, "buckets": 16, "vocab": None},
    "t5-small": {"width": 512, "layers": 6, "heads": 8, "ffn": 2048, "buckets": 32, "vocab": 32128},
}


def build_tiny_model(tokenizer, kind: str = "t5", seed: int = 0, size: str = "tiny"):
    """A randomly initialised T5 or BART of one of MODEL_SIZES (tiny: trains in seconds on a CPU)."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    shape = MODEL_SIZES[size]
    width, layers, heads = shape["width"], shape["layers"], shape["heads"]
    vocab_size = max(len(tokenizer), shape["vocab"] or 0)  # rows past the tokenizer's are never produced by it
    if kind == "t5":
        config = T5Config(
            vocab_size=vocab_size,
            d_model=width,
            d_kv=width // heads,
            d_ff=shape["ffn"],
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            relative_attention_num_buckets=shape["buckets"],
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            # T5 itself has no BOS, but the tokenizer defines one (<s>, for BART): declared here, the Trainer
            # has nothing to align ("The tokenizer has new PAD/BOS/EOS tokens ...") and the saved config is final.
            bos_token_id=tokenizer.bos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        model = T5ForConditionalGeneration(config)
    elif kind == "bart":
        config = BartConfig(
            vocab_size=vocab_size,
            d_model=width,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=heads,
            decoder_attention_heads=heads,
            encoder_ffn_dim=shape["ffn"],
            decoder_ffn_dim=shape["ffn"],
            max_position_embeddings=1024,
            dropout=0.0,
            attention_dropout=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id,
        )
        model = BartForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    model.generation_config.max_length = 32
    model.generation_config.num_beams = 1
    return model


def make_base_model(
    folder: str, kind: str = "t5", seed: int = 0, size: str = "tiny", extra_words: list[str] | None = None
) -> str:
    """Write a tokenizer (knowing `extra_words` too) and a random tiny model to `folder` (loadable with
    from_pretrained)."""
    tokenizer = build_tokenizer(extra_words)
    model = build_tiny_model(tokenizer, kind=kind, seed=seed, size=size)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path: str, rows: list[dict]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def make_corpus_files(folder: str, train: int = 2000, validation: int = 100, test: int = 100, seed: int = 0) -> dict:
    """Write train/validation/test JSON Lines files of the synthetic corpus; return their paths."""
    rows = synthetic_corpus(train + validation + test, seed=seed)
    return {
        "train": write_jsonl(os.path.join(folder, "train.jsonl"), rows[:train]),
        "validation": write_jsonl(os.path.join(folder, "validation.jsonl"), rows[train : train + validation]),
        "test": write_jsonl(os.path.join(folder, "test.jsonl"), rows[train + validation :]),
    }


# --------------------------------------------------------------------------- synthetic language pair

# `seqtune demo --task translation`: English sentences from the word lists above, and their
# translation into Pseudish, a made-up language (code ps) with a fixed rule per word and one
# word-order change: the verb goes to the end of the sentence.
SOURCE_LANG, TARGET_LANG = "en", "ps"
PAIR_PREFIX = "translate English to Pseudish: "
_VOWEL_SHIFT = str.maketrans("aeiou", "eioua")


def pseudish_word(word: str) -> str:
    """A word's Pseudish translation: its letters reversed, each vowel shifted (a->e->i->o->u->a), plus -a;
    punctuation and numbers stay as they are."""
    if not word.isalpha():
        return word
    return word[::-1].translate(_VOWEL_SHIFT) + "a"


def synthetic_pair(rng: random.Random) -> dict:
    """One English sentence (a news lead or a filler sentence) and its Pseudish translation, as the
    nested `translation` column of the Hugging Face translation data sets."""
    if rng.random() < 0.5:
        day, group, city, verb, thing = (rng.choice(words) for words in (DAYS, GROUPS, CITIES, ACTIONS, OBJECTS))
        before, after = f"on {day} the {group} of {city} will", f"the old {thing}"
    else:
        subject, verb, thing, tail = (
            rng.choice(words) for words in (FILLER_SUBJECTS, FILLER_VERBS, FILLER_OBJECTS, FILLER_TAILS)
        )
        before, after = subject, f"{thing} {tail}"
    source = f"{before} {verb} {after} ."
    target = " ".join(pseudish_word(word) for word in f"{before} {after} {verb} .".split())
    return {"translation": {SOURCE_LANG: source, TARGET_LANG: target}}


def synthetic_pairs(size: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [synthetic_pair(rng) for _ in range(size)]


def pseudish_vocabulary() -> list[str]:
    """The Pseudish words (and the prefix's words) the demo's tokenizer must know."""
    return sorted({pseudish_word(word) for word in corpus_vocabulary()} | set(PAIR_PREFIX.lower().split()))


def make_pair_files(folder: str, train: int = 2000, validation: int = 100, test: int = 100, seed: int = 0) -> dict:
    """Write train/validation/test JSON Lines files of the synthetic language pair; return their paths."""
    rows = synthetic_pairs(train + validation + test, seed=seed)
    return {
        "train": write_jsonl(os.path.join(folder, "train.jsonl"), rows[:train]),
        "validation": write_jsonl(os.path.join(folder, "validation.jsonl"), rows[train : train + validation]),
        "test": write_jsonl(os.path.join(folder, "test.jsonl"), rows[train + validation :]),
    }


# --------------------------------------------------------------------------- seqtune demo


@dataclass(frozen=True)
class DemoTask:
    """What `seqtune demo` does differently per task: data, flags, training length, what it prints."""

    title: str
    flags: tuple[str, ...]  # the task's data flags (prefix, languages, source length)
    epochs: int
    learning_rate: str
    metrics: tuple[str, ...]  # eval_* keys printed before and after
    usage: tuple[str, ...]  # how to use the trained model; {run_dir} is replaced
    extra_words: tuple[str, ...] = ()  # words the tokenizer must know besides the corpus's


DEMO_TASKS = {
    "summarization": DemoTask(
        title="tiny T5 on the built-in synthetic summarization corpus",
        flags=("--source_prefix", "summarize: ", "--max_source_length", "128"),
        epochs=5,
        learning_rate="3e-3",
        metrics=("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum"),
        usage=(
            "  summarize new texts with the trained model (one .txt file per document):",
            "    seqtune summarize --model {run_dir} article.txt",
        ),
    ),
    "translation": DemoTask(
        title=f"tiny T5 on the built-in synthetic language pair {SOURCE_LANG}-{TARGET_LANG} (English to Pseudish)",
        flags=(
            "--source_prefix",
            PAIR_PREFIX,
            "--source_lang",
            SOURCE_LANG,
            "--target_lang",
            TARGET_LANG,
            "--max_source_length",
            "48",
        ),
        epochs=3,
        learning_rate="3e-3",
        metrics=("eval_bleu", "eval_chrf"),
        usage=(
            "  translate new sentences with the trained model (one sentence per line):",
            "    seqtune translate --model {run_dir} --lines sentences.txt",
        ),
        extra_words=tuple(pseudish_vocabulary()),
    ),
}


def _demo_arguments(model: str, files: dict, output_dir: str, train: bool, task: DemoTask) -> list[str]:
    args = [
        "--model_name_or_path",
        model,
        "--validation_file",
        files["validation"],
        *task.flags,
        "--output_dir",
        output_dir,
        "--overwrite_output_dir",
        "--do_eval",
        "--predict_with_generate",
        "--per_device_eval_batch_size",
        "50",
        "--max_target_length",
        "32",
        "--report_to",
        "none",
        "--seed",
        "0",
    ]
    if train:
        args += [
            "--train_file",
            files["train"],
            "--test_file",
            files["test"],
            "--do_train",
            "--do_predict",
            "--per_device_train_batch_size",
            "32",
            "--learning_rate",
            task.learning_rate,
            "--num_train_epochs",
            str(task.epochs),
            "--warmup_steps",
            "30",
            "--lr_scheduler_type",
            "linear",
            "--logging_steps",
            "25",
            "--eval_strategy",
            "epoch",
            "--save_strategy",
            "epoch",
            "--save_total_limit",
            "2",
        ]
    return args


@exit_on_user_error(interrupted="seqtune: interrupted. Run the same command again: the demo starts afresh.")
def main(argv: list[str] | None = None) -> dict:
    """`seqtune demo`: build the tiny world, measure ROUGE (BLEU and chrF for --task translation), train,
    measure again."""
    import argparse
    import time

    from .progress import configure_library_progress
    from .recipes.trainer import main as train_main
    from .tasks import TASKS

    parser = argparse.ArgumentParser(prog="seqtune demo", description="Run the embedded default end to end.")
    parser.add_argument(
        "--output_dir",
        default=None,
        help="Where everything is written (replaced on each run; default: "
        "outputs/demo, or outputs/demo-translation with --task translation).",
    )
    parser.add_argument("--train_examples", type=int, default=2000, help="Size of the synthetic training set.")
    parser.add_argument(
        "--task",
        choices=sorted(DEMO_TASKS),
        default="summarization",
        help="summarization: the news-like corpus, ROUGE (default); translation: a made-up language pair "
        f"({SOURCE_LANG} to {TARGET_LANG}), BLEU and chrF",
    )
    args = parser.parse_args(argv)
    demo = DEMO_TASKS[args.task]
    translation = args.task == "translation"
    output_dir = args.output_dir or ("outputs/demo-translation" if translation else "outputs/demo")

    started = time.time()
    configure_library_progress()  # before the base model is saved: no tqdm bar ("\r") in a log
    root = os.path.abspath(output_dir)
    base_model = make_base_model(os.path.join(root, "base-model"), extra_words=list(demo.extra_words))
    make_files = make_pair_files if translation else make_corpus_files
    files = make_files(os.path.join(root, "data"), train=args.train_examples)
    task = TASKS[args.task]
    before = train_main(_demo_arguments(base_model, files, os.path.join(root, "before-training"), False, demo), task)
    after = train_main(_demo_arguments(base_model, files, os.path.join(root, "run"), True, demo), task)

    run_dir = os.path.join(root, "run")
    print()
    print(f"seqtune demo: {demo.title}")
    print(f"  {'metric':<12} {'before':>8} {'after':>8}")
    for key in demo.metrics:
        print(f"  {key[5:]:<12} {before[key]:>8.2f} {after[key]:>8.2f}")
    print(f"  finished in {time.time() - started:.0f} s")
    print(f"  model, checkpoints, results: {run_dir}")
    print(f"  predictions: {os.path.join(run_dir, 'generated_predictions.txt')}")
    print(f"  metrics:     {os.path.join(run_dir, 'all_results.json')}")
    print(f"  report:      {os.path.join(run_dir, 'report.html')} (plots, metrics, examples)")
    for line in demo.usage:
        print(line.format(run_dir=shlex.quote(run_dir)))
    return {"before": before, "after": after, "output_dir": run_dir}
