"""`seqtune summarize`: summarize new texts with a trained model.

    seqtune summarize --model OUTPUT_DIR [--num_beams N --max_length N --batch_size N] INPUT...

Inputs: plain text files (one document per file, or one per line with --lines),
.csv/.json/.jsonl/.parquet files (one document per row, column --text_column), or
standard input ("-", or no INPUT at all). Output: one summary per document, in input
order, as JSON Lines {"id": ..., "summary": ...} (or plain text with --format text), to
standard output or --output FILE. Documents are batched by length for speed; the
progress goes to stderr. The model's saved source prefix (and input/summary lengths,
see `seqtune.modeling.remember_summarization_settings`) is applied automatically.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .arguments import ModelArguments
from .checkpoints import newest_checkpoint
from .data import FILE_BUILDERS, KNOWN_COLUMNS, load_data_file, read_text_file
from .errors import UserError, exit_on_user_error
from .generation import generate_in_input_order
from .metrics import decode_token_ids
from .modeling import load_seq2seq, summarization_settings
from .outputs import atomic_write_text
from .progress import Progress, configure_library_progress
from .runtime import setup_logging

logger = logging.getLogger(__name__)

STDIN = "-"
DEFAULT_MAX_SOURCE_LENGTH = 1024
GENERATION_KEYS = ("max_length", "min_length", "num_beams", "length_penalty", "no_repeat_ngram_size", "early_stopping")
# Columns that usually hold the text, tried in this order when --text_column is not given.
TEXT_COLUMN_GUESSES = ("text", "document", "article", "source", *dict.fromkeys(c for c, _ in KNOWN_COLUMNS.values()))
CHUNK_BATCHES = 32  # documents are sorted by length within chunks of this many batches


@dataclass
class Source:
    """One input: a text file, a table file or standard input, with its documents."""

    name: str
    count: int
    documents: Callable[[], Iterator[tuple[str, str]]]  # (id, text) of each document, in order


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="seqtune summarize",
        description="Summarize texts with a trained model "
        "(the --output_dir of a seqtune run, a checkpoint, or a hub model).",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="text files (one document each), .csv/.json/.jsonl/.parquet files (one document per row), "
        "or - for standard input (the default)",
    )
    parser.add_argument(
        "--model", required=True, help="model folder (a run's --output_dir or checkpoint) or hub model id"
    )
    parser.add_argument(
        "--text_column",
        help="column with the text in table inputs (default: text, document, article, ... or the only column)",
    )
    parser.add_argument("--id_column", help="column whose value becomes the id of each row (default: FILE:ROW)")
    parser.add_argument("--lines", action="store_true", help="plain text inputs hold one document per line")
    parser.add_argument("--output", default=STDIN, help="where the summaries go (default: standard output)")
    parser.add_argument(
        "--format",
        choices=("jsonl", "text"),
        default="jsonl",
        help='jsonl: {"id": ..., "summary": ...} per line (default); text: one summary per line',
    )
    parser.add_argument("--num_beams", type=int, help="beams for generation (default: the model's)")
    parser.add_argument("--max_length", type=int, help="longest summary in tokens (default: the model's)")
    parser.add_argument(
        "--max_source_length",
        type=int,
        help="longest input in tokens; longer ones are truncated (default: the length the model was trained with)",
    )
    parser.add_argument("--batch_size", type=int, default=16, help="documents per generation batch (default: 16)")
    parser.add_argument("--source_prefix", help="text put before every document (default: the model's saved prefix)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--token", help="hub token for a private hub model (default: HF_TOKEN or the stored login)")
    args = parser.parse_args(argv)
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


def _text_documents(name: str, lines: list[tuple[int, str]], per_line: bool) -> list[tuple[str, str]]:
    if per_line:
        documents = [(f"{name}:{number}", text.strip()) for number, text in lines if text.strip()]
        if not documents:
            raise UserError(f"{name} has no text. Fix: write one document per line.")
        return documents
    text = "".join(text for _, text in lines).strip()
    if not text:
        raise UserError(f"{name} is empty. Fix: pass files that hold the text to summarize.")
    return [(name, text)]


def _pick_text_column(columns: list[str], wanted: str | None, where: str) -> str:
    if wanted:
        if wanted not in columns:
            raise UserError(
                f"--text_column {wanted!r} is not a column of {where}; its columns are: {', '.join(columns)}. "
                f"Fix: pass --text_column with one of them."
            )
        return wanted
    if len(columns) == 1:
        return columns[0]
    for guess in TEXT_COLUMN_GUESSES:
        if guess in columns:
            return guess
    raise UserError(
        f"{where} has the columns {', '.join(columns)}: which one holds the text? Fix: pass --text_column NAME."
    )


def _table_source(path: str, args) -> Source:
    dataset = load_data_file(path, "input", cache_dir=None)
    column = _pick_text_column(dataset.column_names, args.text_column, path)
    dtype = getattr(dataset.features[column], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise UserError(
            f"column {column!r} of {path} holds {dtype or type(dataset.features[column]).__name__}, not text. "
            f"Fix: choose the text column with --text_column."
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
    lines = list(enumerate(text.splitlines(keepends=True), start=1))
    if not text.strip():
        raise UserError("standard input is empty. Fix: pipe the text to summarize, or pass files.")
    documents = _text_documents("stdin", lines, args.lines)
    return Source("stdin", len(documents), lambda: iter(documents))


def collect_sources(args) -> list[Source]:
    """Check every input before any generation, so a typo in the last file wastes nothing."""
    inputs = args.inputs or [STDIN]
    if inputs.count(STDIN) > 1:
        raise UserError("standard input (-) is given twice. Fix: pass - once.")
    if not args.inputs and sys.stdin.isatty():
        raise UserError("no input. Fix: pass files to summarize, or pipe text into `seqtune summarize`.")
    sources = []
    for path in inputs:
        if path == STDIN:
            sources.append(_stdin_source(args))
            continue
        _check_path(path)
        if os.path.splitext(path)[1].lower() in FILE_BUILDERS:
            sources.append(_table_source(path, args))
        else:
            documents = _text_documents(path, read_text_file(path, "input"), args.lines)
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
    if os.path.isdir(folder) and not os.path.exists(os.path.join(folder, "config.json")):
        newest = newest_checkpoint(folder)
        hint = f"pass its newest checkpoint, --model {newest}" if newest else "pass a folder with a saved model"
        raise UserError(
            f"--model {model_path} holds no saved model (no config.json; a run still going or stopped "
            f"early?). Fix: {hint}."
        )


def load_summarizer(args) -> Summarizer:
    import torch

    model_path = args.model
    tokenizer, model = load_seq2seq(ModelArguments(model_name_or_path=os.path.expanduser(model_path), token=args.token))
    settings = summarization_settings(model.config)
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
        "Summarizing with %s: prefix %r, inputs up to %d tokens, generation %s, on %s.",
        model_path,
        prefix,
        max_source_length,
        generation or "(the model's defaults)",
        device,
    )
    return Summarizer(tokenizer, model, prefix, max_source_length, generation, args.batch_size, device)


def _format(identifier: str, summary: str, output_format: str) -> str:
    if output_format == "text":
        return summary + "\n"
    return json.dumps({"id": identifier, "summary": summary}, ensure_ascii=False) + "\n"


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    """`seqtune summarize`; returns the number of documents summarized."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    setup_logging()
    configure_library_progress()
    check_model_path(args.model)
    sources = collect_sources(args)
    total = sum(source.count for source in sources)
    summarizer = load_summarizer(args)

    to_stdout = args.output == STDIN
    if not to_stdout:
        folder = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(folder):
            raise UserError(f"--output {args.output}: the folder {folder} does not exist. Fix: create it first.")
    written: list[str] = []
    with Progress(total, "Summarizing", unit="doc") as progress:
        for chunk in _chunks(documents_of(sources), args.batch_size * CHUNK_BATCHES):
            summaries = summarizer.summarize([text for _, text in chunk], progress)
            lines = [_format(identifier, summary, args.format) for (identifier, _), summary in zip(chunk, summaries)]
            if to_stdout:
                sys.stdout.write("".join(lines))
                sys.stdout.flush()
            else:
                written.extend(lines)
    if not to_stdout:
        atomic_write_text(args.output, "".join(written))  # complete or not there at all
        logger.info("Wrote %d summaries to %s.", total, args.output)
    return total
