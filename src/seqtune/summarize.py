"""`seqtune summarize` and `seqtune translate`: summarize or translate new texts with a trained model.

    seqtune summarize --model OUTPUT_DIR [--num_beams N --max_length N --batch_size N] INPUT...
    seqtune translate --model OUTPUT_DIR [--source_lang en --target_lang ro ...] INPUT...

One command for every task (`seqtune.tasks`): the task picks the settings saved with the model
and the words of the help and the messages; what is described below for summaries holds for
translations (column --source_column, output {"id": ..., "translation": ...}).

Inputs: plain text files (one document per file, or one per line with --lines),
.csv/.json/.jsonl/.parquet files (one document per row, column --text_column), or
standard input ("-", or no INPUT at all). Output: one summary per document, in input
order, as JSON Lines {"id": ..., "summary": ...} (or plain text with --format text), to
standard output or --output FILE. Documents are batched by length for speed; the
progress goes to stderr. The model's saved source prefix (and input/summary lengths,
see `seqtune.modeling.remember_task_settings`) is applied automatically; for translation also
the languages (set on multilingual tokenizers such as mBART's, NLLB's or M2M100's).

A model whose saved settings are all for another task (fine-tuned for translation, used with
`seqtune summarize`) is refused with the right command to use, unless --source_prefix is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from .adapters import is_adapter_folder, load_adapter_folder
from .arguments import ModelArguments, TranslationDataArguments
from .checkpoints import newest_checkpoint
from .data import FILE_BUILDERS, KNOWN_COLUMNS, load_data_file, read_text_file
from .errors import UserError, exit_on_user_error
from .generation import generate_in_input_order
from .metrics import decode_token_ids
from .modeling import apply_language_settings, load_seq2seq, task_settings
from .outputs import atomic_write_text
from .progress import Progress, configure_library_progress
from .runtime import setup_logging
from .tasks import SUMMARIZATION, TASKS, TRANSLATION, Task

logger = logging.getLogger(__name__)

STDIN = "-"
DEFAULT_MAX_SOURCE_LENGTH = 1024
GENERATION_KEYS = ("max_length", "min_length", "num_beams", "length_penalty", "no_repeat_ngram_size", "early_stopping")
# Columns that usually hold the text, tried in this order when --text_column is not given.
TEXT_COLUMN_GUESSES = ("text", "document", "article", "source", *dict.fromkeys(c for c, _ in KNOWN_COLUMNS.values()))
CHUNK_BATCHES = 32  # documents are sorted by length within chunks of this many batches


@dataclass(frozen=True)
class Words:
    """How one task's command speaks in its help and messages."""

    verb: str  # summarize: also the command's name
    doing: str  # Summarizing: the progress line and the log
    output: str  # summary: also the key of the JSON Lines output
    outputs: str  # summaries
    document: str  # document: what one input item is
    unit: str  # doc: the progress unit


WORDS = {
    SUMMARIZATION.name: Words("summarize", "Summarizing", "summary", "summaries", "document", "doc"),
    TRANSLATION.name: Words("translate", "Translating", "translation", "translations", "text", "text"),
}


def words_of(task: Task) -> Words:
    return WORDS[task.name]


@dataclass
class Source:
    """One input: a text file, a table file or standard input, with its documents."""

    name: str
    count: int
    documents: Callable[[], Iterator[tuple[str, str]]]  # (id, text) of each document, in order


def parse_args(argv: list[str], task: Task = SUMMARIZATION) -> argparse.Namespace:
    words, column_flag = words_of(task), task.column_flags[0]
    parser = argparse.ArgumentParser(
        prog=f"seqtune {task.command}",
        description=f"{words.verb.capitalize()} texts with a trained model "
        "(the --output_dir of a seqtune run, a checkpoint, or a hub model).",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help=f"text files (one {words.document} each), .csv/.json/.jsonl/.parquet files (one {words.document} "
        "per row), or - for standard input (the default)",
    )
    parser.add_argument(
        "--model", required=True, help="model folder (a run's --output_dir or checkpoint) or hub model id"
    )
    column_default = "text, document, article, ... or the only column"
    if task is TRANSLATION:
        column_default = f"the source language's, e.g. translation.en or en; else {column_default}"
    parser.add_argument(
        f"--{column_flag}",
        dest="text_column",
        help=f"column with the text in table inputs (default: {column_default})",
    )
    parser.add_argument("--id_column", help="column whose value becomes the id of each row (default: FILE:ROW)")
    parser.add_argument("--lines", action="store_true", help=f"plain text inputs hold one {words.document} per line")
    parser.add_argument("--output", default=STDIN, help=f"where the {words.outputs} go (default: standard output)")
    parser.add_argument(
        "--format",
        choices=("jsonl", "text"),
        default="jsonl",
        help=f'jsonl: {{"id": ..., "{words.output}": ...}} per line (default); text: one {words.output} per line',
    )
    parser.add_argument("--num_beams", type=int, help="beams for generation (default: the model's)")
    parser.add_argument("--max_length", type=int, help=f"longest {words.output} in tokens (default: the model's)")
    parser.add_argument(
        "--max_source_length",
        type=int,
        help="longest input in tokens; longer ones are truncated (default: the length the model was trained with)",
    )
    parser.add_argument(
        "--batch_size", type=int, default=16, help=f"{words.document}s per generation batch (default: 16)"
    )
    parser.add_argument(
        "--source_prefix", help=f"text put before every {words.document} (default: the model's saved prefix)"
    )
    if task is TRANSLATION:
        parser.add_argument(
            "--source_lang",
            help="language of the inputs, e.g. en (mBART: en_XX, NLLB: eng_Latn); default: the one the model was "
            "trained with",
        )
        parser.add_argument(
            "--target_lang", help="language to translate into, e.g. ro (default: the one the model was trained with)"
        )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--token", help="hub token for a private hub model (default: HF_TOKEN or the stored login)")
    args = parser.parse_args(argv)
    args.task = task
    for flag in ("num_beams", "max_length", "max_source_length", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag} must be at least 1, got {value}.")
    return args


# --------------------------------------------------------------------------- inputs


def _check_path(path: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"input {path}: no such file. Fix: check the path (relative paths start at {os.getcwd()}).")
    if os.path.isdir(path):
        raise UserError(f"input {path} is a folder. Fix: pass the files in it (e.g. {os.path.join(path, '*.txt')}).")


def _text_documents(
    name: str, lines: list[tuple[int, str]], per_line: bool, words: Words = WORDS[SUMMARIZATION.name]
) -> list[tuple[str, str]]:
    if per_line:
        documents = [(f"{name}:{number}", text.strip()) for number, text in lines if text.strip()]
        if not documents:
            raise UserError(f"{name} has no text. Fix: write one {words.document} per line.")
        return documents
    text = "".join(text for _, text in lines).strip()
    if not text:
        raise UserError(f"{name} is empty. Fix: pass files that hold the text to {words.verb}.")
    return [(name, text)]


def column_guesses(task: Task, source_lang: str | None) -> tuple[str, ...]:
    """The columns tried, in order, for the text of table inputs: for translation first the source
    language's (flattened nested `translation.en`, or flat `en`)."""
    if task is not TRANSLATION or not source_lang:
        return TEXT_COLUMN_GUESSES
    key = TranslationDataArguments.data_key(source_lang)
    return (f"translation.{key}", key, f"translation.{source_lang}", source_lang, *TEXT_COLUMN_GUESSES)


def _pick_text_column(
    columns: list[str],
    wanted: str | None,
    where: str,
    guesses: tuple[str, ...] = TEXT_COLUMN_GUESSES,
    flag: str = "text_column",
) -> str:
    if wanted:
        if wanted not in columns:
            raise UserError(
                f"--{flag} {wanted!r} is not a column of {where}; its columns are: {', '.join(columns)}. "
                f"Fix: pass --{flag} with one of them."
            )
        return wanted
    if len(columns) == 1:
        return columns[0]
    for guess in guesses:
        if guess in columns:
            return guess
    raise UserError(f"{where} has the columns {', '.join(columns)}: which one holds the text? Fix: pass --{flag} NAME.")


def _table_source(path: str, args) -> Source:
    task = getattr(args, "task", SUMMARIZATION)
    flag = task.column_flags[0]
    dataset = load_data_file(path, "input", cache_dir=None)
    if task is TRANSLATION and any(isinstance(dataset.features[name], dict) for name in dataset.column_names):
        dataset = dataset.flatten()  # nested {"translation": {"en": ...}}: columns translation.en, ...
    guesses = column_guesses(task, getattr(args, "source_lang", None))
    column = _pick_text_column(dataset.column_names, args.text_column, path, guesses, flag)
    dtype = getattr(dataset.features[column], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise UserError(
            f"column {column!r} of {path} holds {dtype or type(dataset.features[column]).__name__}, not text. "
            f"Fix: choose the text column with --{flag}."
        )
    if args.id_column and args.id_column not in dataset.column_names:
        raise UserError(
            f"--id_column {args.id_column!r} is not a column of {path}; its columns are: "
            f"{', '.join(dataset.column_names)}."
        )
    texts = dataset[column]
    for row, text in enumerate(texts, start=1):
        if text is None or not text.strip():
            raise UserError(f"{path}, row {row}: the {column!r} column is empty. Fix: fill it in or remove the row.")
    ids = (
        [str(value) for value in dataset[args.id_column]]
        if args.id_column
        else [f"{path}:{row}" for row in range(1, len(texts) + 1)]
    )
    return Source(path, len(texts), lambda: zip(ids, texts))


def _stdin_source(args) -> Source:
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"standard input is not valid UTF-8 (byte {error.start + 1}). Fix: pipe UTF-8 text.") from None
    words = words_of(getattr(args, "task", SUMMARIZATION))
    lines = list(enumerate(text.splitlines(keepends=True), start=1))
    if not text.strip():
        raise UserError(f"standard input is empty. Fix: pipe the text to {words.verb}, or pass files.")
    documents = _text_documents("stdin", lines, args.lines, words)
    return Source("stdin", len(documents), lambda: iter(documents))


def collect_sources(args) -> list[Source]:
    """Check every input before any generation, so a typo in the last file wastes nothing."""
    words = words_of(getattr(args, "task", SUMMARIZATION))
    inputs = args.inputs or [STDIN]
    if inputs.count(STDIN) > 1:
        raise UserError("standard input (-) is given twice. Fix: pass - once.")
    if not args.inputs and sys.stdin.isatty():
        raise UserError(f"no input. Fix: pass files to {words.verb}, or pipe text into `seqtune {words.verb}`.")
    sources = []
    for path in inputs:
        if path == STDIN:
            sources.append(_stdin_source(args))
            continue
        _check_path(path)
        if os.path.splitext(path)[1].lower() in FILE_BUILDERS:
            sources.append(_table_source(path, args))
        else:
            documents = _text_documents(path, read_text_file(path, "input"), args.lines, words)
            sources.append(Source(path, len(documents), lambda documents=documents: iter(documents)))
    return sources


def documents_of(sources: list[Source]) -> Iterator[tuple[str, str]]:
    for source in sources:
        yield from source.documents()


# --------------------------------------------------------------------------- generation


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _pad(sequences: list[list[int]], pad_id: int):
    import torch

    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


class Summarizer:
    """A model with its tokenizer, prefix and generation settings; `summarize(texts)` keeps the order."""

    def __init__(
        self, tokenizer, model, prefix: str, max_source_length: int, generation: dict, batch_size: int, device: str
    ):
        self.tokenizer = tokenizer
        self.model = model.to(device).eval()
        self.prefix = prefix
        self.max_source_length = max_source_length
        self.generation = generation
        self.batch_size = batch_size
        self.device = device

    def summarize(self, texts: list[str], progress: Progress | None = None) -> list[str]:
        """Summaries of `texts` in the same order, generated longest-first in batches of similar length."""
        encoded = self.tokenizer(
            [self.prefix + text for text in texts], truncation=True, max_length=self.max_source_length
        )["input_ids"]

        def generate_sorted(indices: list[int]) -> Iterator[str]:
            for start in range(0, len(indices), self.batch_size):
                batch = [encoded[index] for index in indices[start : start + self.batch_size]]
                yield from self._generate(batch)
                if progress is not None:
                    progress.update(len(batch))

        lengths = [len(ids) for ids in encoded]
        return list(generate_in_input_order(lengths, generate_sorted, window=max(len(texts), 1)))

    def _generate(self, batch: list[list[int]]) -> list[str]:
        import torch

        input_ids, attention_mask = _pad(batch, self.tokenizer.pad_token_id)
        with torch.inference_mode():
            generated = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device), **self.generation
            )
        return [" ".join(summary.split()) for summary in decode_token_ids(generated.cpu().numpy(), self.tokenizer)]


def check_model_path(model_path: str) -> None:
    """A --model that is meant as a folder must exist (checked before any input is read)."""
    folder = os.path.expanduser(model_path)
    if (os.sep in model_path or model_path.startswith((".", "~"))) and not os.path.isdir(folder):
        raise UserError(
            f"--model {model_path}: no such folder. Fix: pass the --output_dir of a seqtune run, "
            f"one of its checkpoint folders, or a hub model id."
        )
    if (
        os.path.isdir(folder)
        and not os.path.exists(os.path.join(folder, "config.json"))
        and not is_adapter_folder(folder)
    ):
        newest = newest_checkpoint(folder)
        hint = f"pass its newest checkpoint, --model {newest}" if newest else "pass a folder with a saved model"
        raise UserError(
            f"--model {model_path} holds no saved model (no config.json; a run still going or stopped "
            f"early?). Fix: {hint}."
        )


def _saved_by_seqtune(settings: dict) -> bool:
    """Settings `remember_task_settings` wrote (a hub model's own, such as t5-small's, have no input length)."""
    return bool(settings) and "max_source_length" in settings


def settings_for(config, args) -> dict:
    """The settings saved with the model for the command's task (`task_settings`), else {}.

    For translation without settings of its own, a hub model's `translation_{source}_to_{target}`
    entry (google-t5/t5-small's translation_en_to_de) when --source_lang and --target_lang pick one.
    A model that seqtune fine-tuned for another task only is refused with the command to use
    instead, unless --source_prefix says how to prompt it.
    """
    task = getattr(args, "task", SUMMARIZATION)
    settings = task_settings(config, task.name)
    if settings:
        return settings
    params = getattr(config, "task_specific_params", None) or {}
    if task is TRANSLATION:
        source, target = (TranslationDataArguments.data_key(lang) for lang in (args.source_lang, args.target_lang))
        if source and target and task_settings(config, f"translation_{source}_to_{target}"):
            return task_settings(config, f"translation_{source}_to_{target}")
        pairs = sorted(key for key in params if key.startswith("translation_"))
        if pairs:
            source, _, target = pairs[0][len("translation_") :].partition("_to_")
            logger.warning(
                "%s has no settings saved for translation, but for %s: pass --source_lang and --target_lang to use "
                "one (%s: --source_lang %s --target_lang %s).",
                args.model,
                ", ".join(pairs),
                pairs[0],
                source,
                target,
            )
            return {}
    others = [TASKS[name] for name in TASKS if name != task.name and _saved_by_seqtune(task_settings(config, name))]
    if others and args.source_prefix is None:
        other, saved = others[0], task_settings(config, others[0].name)
        languages = (
            f" from {saved['source_lang']} to {saved['target_lang']}"
            if saved.get("source_lang") and saved.get("target_lang")
            else ""
        )
        raise UserError(
            f"--model {args.model} was fine-tuned for {other.name}{languages}, not {task.name}: its saved settings "
            f"(prefix {saved.get('prefix', '')!r}) are for {other.name} only. Fix: use `seqtune {other.command} "
            f"--model {args.model} ...`; or, to {words_of(task).verb} with it anyway, pass --source_prefix "
            f'(--source_prefix "" for none).'
        )
    if others:
        logger.warning(
            "%s was fine-tuned for %s, not %s: generating with --source_prefix %r and the model's defaults.",
            args.model,
            others[0].name,
            task.name,
            args.source_prefix,
        )
    return {}


def local_config(model_path: str):
    """The task settings of a local model folder's config.json, read before the model loads (None for a hub
    id or a folder without config.json), as a config-like object."""
    path = os.path.join(os.path.expanduser(model_path), "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            params = json.load(handle).get("task_specific_params")
    except (OSError, ValueError, AttributeError):
        return None  # loading the model says what is wrong with it
    return argparse.Namespace(task_specific_params=params if isinstance(params, dict) else None)


def load_summarizer(args, settings: dict | None = None) -> Summarizer:
    """The model of --model with its saved settings for the command's task (`settings_for`, unless given)."""
    import torch

    task = getattr(args, "task", SUMMARIZATION)
    model_path = args.model
    # A LoRA run's output dir or checkpoint: its base model (named in adapter_config.json) with the adapter merged.
    loaded = load_adapter_folder(model_path, token=args.token)
    tokenizer, model = loaded or load_seq2seq(
        ModelArguments(model_name_or_path=os.path.expanduser(model_path), token=args.token)
    )
    if settings is None:
        settings = settings_for(model.config, args)
    languages = ""
    if task is TRANSLATION:
        source = args.source_lang or settings.get("source_lang")
        target = args.target_lang or settings.get("target_lang")
        # Multilingual tokenizers (mBART, NLLB, M2M100): their source and target language, the forced first token.
        apply_language_settings(tokenizer, model, TranslationDataArguments(source_lang=source, target_lang=target))
        languages = f" from {source or '(source not saved)'} to {target or '(target not saved)'}"
    prefix = args.source_prefix if args.source_prefix is not None else settings.get("prefix", "")
    limits = [
        settings.get("max_source_length") or DEFAULT_MAX_SOURCE_LENGTH,
        getattr(model.config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    max_source_length = args.max_source_length or min(limit for limit in limits if isinstance(limit, int) and limit > 0)
    generation = {key: settings[key] for key in GENERATION_KEYS if settings.get(key) is not None}
    if args.max_length is not None:
        generation["max_length"] = args.max_length
        if (generation.get("min_length") or 0) > args.max_length:
            del generation["min_length"]
    if args.num_beams is not None:
        generation["num_beams"] = args.num_beams
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    logger.info(
        "%s with %s%s: prefix %r, inputs up to %d tokens, generation %s, on %s.",
        words_of(task).doing,
        model_path,
        languages,
        prefix,
        max_source_length,
        generation or "(the model's defaults)",
        device,
    )
    return Summarizer(tokenizer, model, prefix, max_source_length, generation, args.batch_size, device)


def _format(identifier: str, summary: str, output_format: str, key: str = "summary") -> str:
    if output_format == "text":
        return summary + "\n"
    return json.dumps({"id": identifier, key: summary}, ensure_ascii=False) + "\n"


@exit_on_user_error
def main(argv: list[str] | None = None, task: Task = SUMMARIZATION) -> int:
    """`seqtune summarize` (`seqtune translate` with task=TRANSLATION); returns the number of documents done."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv, task)
    words = words_of(task)
    setup_logging()
    configure_library_progress()
    check_model_path(args.model)
    settings = None
    config = local_config(args.model)
    if config is not None:  # a local model: a model of another task is refused before any input is read
        settings = settings_for(config, args)
        if task is TRANSLATION and args.source_lang is None:
            args.source_lang = settings.get("source_lang")  # which column of nested or flat table inputs
    sources = collect_sources(args)
    total = sum(source.count for source in sources)
    summarizer = load_summarizer(args, settings)

    to_stdout = args.output == STDIN
    if not to_stdout:
        folder = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(folder):
            raise UserError(f"--output {args.output}: the folder {folder} does not exist. Fix: create it first.")
    written: list[str] = []
    with Progress(total, words.doing, unit=words.unit) as progress:
        for chunk in _chunks(documents_of(sources), args.batch_size * CHUNK_BATCHES):
            summaries = summarizer.summarize([text for _, text in chunk], progress)
            lines = [
                _format(identifier, summary, args.format, words.output)
                for (identifier, _), summary in zip(chunk, summaries)
            ]
            if to_stdout:
                sys.stdout.write("".join(lines))
                sys.stdout.flush()
            else:
                written.extend(lines)
    if not to_stdout:
        atomic_write_text(args.output, "".join(written))  # complete or not there at all
        logger.info("Wrote %d %s to %s.", total, words.outputs, args.output)
    return total


translate = partial(main, task=TRANSLATION)  # `seqtune translate`
