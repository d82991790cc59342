"""Data read as streams (--streaming): corpora and test sets larger than memory and disk.

Nothing of the train split is loaded whole or written to a cache. The rows are read from
the files (or a hub data set's stream) as training goes, cut into blocks of
--shuffle_buffer_size examples; each block is tokenized at once (a fast tokenizer encodes a
batch on all cores) and put in a random, length-grouped order drawn from (seed, pass, block).
When the files run out, the next pass starts: files and blocks in a new order.

Exact resume: a position in the stream is where a block starts in the files (a byte offset in
a JSON Lines or CSV file, a row group of a Parquet file, a hub stream's own state) plus the
examples of that block already trained on. A resumed run reads that one block again, not the
examples before it, so resuming costs the same after a thousand examples as after a billion.

Several processes: every process reads the same stream and Accelerate gives each its part of
every batch (`IterableDatasetShard`, with `dispatch_batches=False`), so each example is used
once per pass across processes. The examples consumed are then steps x the global batch,
which is how the recipes ask for the position to put in a checkpoint (`position_at`).

The validation and test splits are read once per evaluation, in order (`EvaluationStream`), in
windows that generation sorts by length and writes back in input order (seqtune.generation).

Bad rows mid-stream (a broken JSON line, a CSV row with the wrong number of fields, a number
where the text should be) stop the run with the same file/line message as the up-front
checks of in-memory data, or with --skip_bad_rows are skipped, counted and logged.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from .batching import LengthGroupedSampler
from .errors import UserError

logger = logging.getLogger(__name__)

STREAM_POSITION_FILE = "stream_position.json"  # in a Trainer checkpoint: where the training stream resumes
STREAMABLE_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
BAD_ROWS_LOGGED = 10  # --skip_bad_rows: rows named one by one in the log; the rest are counted
RESULTS_PREFIX = {"train": "train", "validation": "eval", "test": "predict"}  # a split's keys in all_results.json


# --------------------------------------------------------------------------- positions


@dataclass
class StreamPosition:
    """Where a block starts: the pass, the block's number in it, the file and the place in the file."""

    pass_number: int = 0
    block: int = 0
    file: int = 0  # index into this pass's file order
    place: Any = None  # the source's own position (None: the start of the file)
    used_in_pass: int = 0  # usable rows of this pass before the block (for --max_train_samples)
    examples_before: int = 0  # examples of all passes before the block
    skip: int = 0  # examples of the block already trained on (a checkpoint's position)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> StreamPosition:
        return cls(**state)


class BadRow(Exception):
    """A row that cannot be used: the message names the file, the line and the fix."""


# --------------------------------------------------------------------------- sources


class JsonLinesFile:
    """A JSON Lines file read from a byte offset; place = (offset, line number)."""

    def __init__(self, path: str):
        self.path = path
        self.place = (0, 0)

    def columns(self) -> list[str]:
        for _, record in self.rows(None):
            if isinstance(record, BadRow):
                raise UserError(str(record))
            return flat_columns(record)
        raise UserError(
            f'{self.path} holds no rows: write one JSON object per line, e.g. {{"text": ..., "summary": ...}}.'
        )

    def rows(self, place) -> Iterator[tuple[str, Any]]:
        offset, line = place or (0, 0)
        self.place = (offset, line)
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            for raw in iter(handle.readline, b""):
                offset, line = offset + len(raw), line + 1
                self.place = (offset, line)
                where = f"{self.path}, line {line}"
                try:
                    text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
                except UnicodeDecodeError as error:
                    yield (
                        where,
                        BadRow(
                            f"{where}, column {error.start + 1}: not valid UTF-8 (byte 0x{raw[error.start]:02x}). "
                            f"Fix: re-save the file with UTF-8 encoding."
                        ),
                    )
                    continue
                if not text.strip():
                    continue
                try:
                    record = json.loads(text.rstrip("\r\n"))
                except (json.JSONDecodeError, RecursionError) as error:
                    column = f", column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
                    reason = error.msg if isinstance(error, json.JSONDecodeError) else "nested too deeply"
                    yield (
                        where,
                        BadRow(
                            f"{where}{column}: invalid JSON ({reason}). Fix: write one complete JSON object per line."
                        ),
                    )
                    continue
                if not isinstance(record, dict):
                    yield where, BadRow(f'{where}: expected an object like {{"text": ..., "summary": ...}}.')
                    continue
                yield where, record


class CsvFile:
    """A CSV file with a header line, read from a byte offset; place = (offset, line number)."""

    def __init__(self, path: str):
        self.path = path
        self.place = None
        self.header: list[str] | None = None

    def _lines(self, handle, offset: int, line: int):
        while True:
            raw = handle.readline()
            if not raw:
                return
            offset, line = offset + len(raw), line + 1
            self.place = (offset, line)
            try:
                yield raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise UserError(
                    f"{self.path}, line {line}, column {error.start + 1}: the file is not valid UTF-8. "
                    f"Fix: re-save the file with UTF-8 encoding."
                ) from None

    def columns(self) -> list[str]:
        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # long documents are not malformed
        with open(self.path, "rb") as handle:
            header = next(csv.reader(self._lines(handle, 0, 0)), None)
            header_end = self.place
        if not header or not any(name.strip() for name in header):
            raise UserError(
                f"{self.path} is empty: it needs a header line naming the columns, then one row per example."
            )
        self.header, self.header_end = header, header_end
        return header

    def rows(self, place) -> Iterator[tuple[str, Any]]:
        if self.header is None:
            self.columns()
        offset, line = place or self.header_end
        self.place = (offset, line)
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            reader = csv.reader(self._lines(handle, offset, line), strict=True)
            while True:
                first_line = self.place[1] + 1
                try:
                    row = next(reader, None)
                except csv.Error as error:
                    where = f"{self.path}, line {first_line}"
                    yield (
                        where,
                        BadRow(f'{where}: malformed CSV ({error}). Fix: close every double quote, write "" inside.'),
                    )
                    return  # the reader cannot go on after a broken quote
                if row is None:
                    return
                if not row:
                    continue
                where = f"{self.path}, line {first_line}"
                if len(row) != len(self.header):
                    fields = f"{len(self.header)} fields ({', '.join(self.header)})"
                    yield (
                        where,
                        BadRow(
                            f"{where}: expected {fields}, found {len(row)}. "
                            f"Fix: quote fields that contain commas or line breaks with double quotes."
                        ),
                    )
                    continue
                yield where, dict(zip(self.header, row))


class ParquetFile:
    """A Parquet file read one row group at a time; place = (row group, row in it, rows before it)."""

    def __init__(self, path: str, columns: list[str] | None = None):
        self.path = path
        self.wanted = columns  # top-level columns to read (None: all)
        self.place = None

    def _file(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise UserError(
                f"{self.path} is not a readable Parquet file ({error}). Fix: write it again, e.g. with pandas."
            ) from None

    def columns(self) -> list[str]:
        schema = self._file().schema_arrow
        names = []
        for column in schema:
            if hasattr(column.type, "num_fields") and column.type.num_fields and not hasattr(column.type, "value_type"):
                names += [f"{column.name}.{column.type.field(i).name}" for i in range(column.type.num_fields)]
            else:
                names.append(column.name)
        return names

    def rows(self, place) -> Iterator[tuple[str, Any]]:
        first_group, row_in_group, before = place or (0, 0, 0)
        parquet = self._file()
        for group in range(first_group, parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=self.wanted)
            records = table.to_pylist()
            for index in range(row_in_group, len(records)):
                self.place = (group, index + 1, before)
                yield f"{self.path}, row {before + index + 1}", records[index]
            before += len(records)
            row_in_group = 0
            self.place = (group + 1, 0, before)


class HubStream:
    """A hub data set (or a local data set folder) read with datasets' streaming; place = its state_dict."""

    def __init__(self, dataset, name: str, split: str = "train"):
        self.dataset, self.name, self.split = dataset, name, split
        self.count = 0
        # datasets starts every later iteration where load_state_dict last put it: a new pass loads this.
        self.beginning = dataset.state_dict()

    @property
    def place(self):
        return {"state": self.dataset.state_dict(), "count": self.count}

    def columns(self) -> list[str]:
        if self.dataset.features is not None:
            names = []
            for column, feature in self.dataset.features.items():
                names += [f"{column}.{key}" for key in feature] if isinstance(feature, dict) else [column]
            return names
        for _, record in self.rows(None):
            return flat_columns(record)
        raise UserError(f"data set {self.name!r} split {self.split!r} holds no rows.")

    def rows(self, place) -> Iterator[tuple[str, Any]]:
        self.dataset.load_state_dict(place["state"] if place is not None else self.beginning)
        self.count = place["count"] if place else 0
        for record in self.dataset:
            self.count += 1
            yield f"data set {self.name!r} split {self.split!r}, example {self.count}", record


def flat_columns(record: dict) -> list[str]:
    """Column names of a record, nested objects flattened as `column.key` (datasets' flatten())."""
    names = []
    for key, value in record.items():
        names += [f"{key}.{inner}" for inner in value] if isinstance(value, dict) else [key]
    return names


def column_value(record: dict, column: str):
    """The value of `column`, which may name a nested key (`translation.en`)."""
    if column in record:
        return record[column]
    outer, _, inner = column.partition(".")
    nested = record.get(outer)
    return nested.get(inner) if isinstance(nested, dict) else None


# --------------------------------------------------------------------------- the corpus


def expand_train_files(pattern: str, flag: str = "--train_file") -> list[str]:
    """--train_file (or --validation_file, --test_file: `flag`) as a path or a glob ('shards/train-*.jsonl'),
    sorted; checked before anything is read."""
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not paths:
        raise UserError(f"{flag} {pattern}: the pattern matches no file. Fix: check the path and the pattern.")
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(
                f"{flag} {path}: no such file. Fix: check the path (relative paths start at {os.getcwd()})."
            )
        extension = os.path.splitext(path)[1].lower()
        if extension not in STREAMABLE_EXTENSIONS:
            raise UserError(
                f"{flag} {path}: unsupported file type {extension or '(no extension)'!r}. "
                f"Fix: use one of {', '.join(STREAMABLE_EXTENSIONS)}."
            )
        if os.path.getsize(path) == 0:
            raise UserError(f"{flag} {path} is empty. Fix: add examples to it, or leave it out of the pattern.")
        if extension == ".json":
            with open(path, "rb") as handle:
                head = handle.read(64).lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()
            if head.startswith(b"["):
                raise UserError(
                    f"{path} is one JSON list: --streaming reads JSON Lines (one object per line). "
                    f"Fix: write it as JSON Lines (.jsonl), or run without --streaming."
                )
    return paths


def open_file(path: str):
    extension = os.path.splitext(path)[1].lower()
    if extension == ".csv":
        return CsvFile(path)
    if extension == ".parquet":
        return ParquetFile(path)
    return JsonLinesFile(path)


def derived_seed(*parts: int) -> int:
    """A seed for (seed, pass, block): independent streams, the same on every process and every resume."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


class Corpus:
    """The training rows of every pass, as usable (text, target) rows with their place.

    `sources` are the files in their given order (or one hub stream); each pass after the
    first visits them in a new order (unless the order is sequential).
    """

    def __init__(
        self,
        sources: list,
        text_column: str,
        target_column: str,
        *,
        cap: int | None = None,  # --max_train_samples: usable rows per pass
        skip_bad_rows: bool = False,
        words: tuple[str, str] = ("text", "summary"),
        split: str = "train",  # "validation" and "test" are read once (EvaluationStream)
    ):
        self.sources, self.text_column, self.target_column = sources, text_column, target_column
        self.cap, self.skip_bad_rows, self.words, self.split = cap, skip_bad_rows, words, split
        self.seed, self.shuffle = 0, True  # set by the TrainingStream that reads the corpus
        self.empty_rows = 0  # rows with an empty text or target, dropped (as in-memory data drops them)
        self.bad_rows = 0  # --skip_bad_rows: malformed rows skipped
        self.current = None  # (file index, source) being read

    def file_order(self, pass_number: int) -> list[int]:
        order = list(range(len(self.sources)))
        # --max_train_samples N means the first N rows, in the files' given order, every pass.
        if self.shuffle and self.cap is None and pass_number > 0:
            import torch

            generator = torch.Generator().manual_seed(derived_seed(self.seed, pass_number))
            order = torch.randperm(len(order), generator=generator).tolist()
        return order

    def rows_of_pass(self, start: StreamPosition) -> Iterator[tuple[int, dict]]:
        """(file index, {text, target}) of the usable rows of one pass from `start`."""
        order = self.file_order(start.pass_number)
        used = start.used_in_pass
        for file_index in range(start.file, len(order)):
            source = self.sources[order[file_index]]
            place = start.place if file_index == start.file else None
            self.current = (file_index, source)
            for where, record in source.rows(place):
                if self.cap is not None and used >= self.cap:
                    return
                row = self._usable(where, record)
                if row is not None:
                    used += 1
                    yield file_index, row
            self.current = (file_index + 1, None)

    def first_rows(self, count: int) -> list[dict]:
        """The first `count` usable rows ({text, target}) of the first pass (a few rows are read)."""
        return [row for _, row in _take(self.rows_of_pass(StreamPosition()), count)]

    def _usable(self, where: str, record) -> dict | None:
        if isinstance(record, BadRow):
            return self._bad(str(record))
        text, target = column_value(record, self.text_column), column_value(record, self.target_column)
        for column, value in ((self.text_column, text), (self.target_column, target)):
            if value is not None and not isinstance(value, str):
                return self._bad(
                    f"{where}: column {column!r} holds {type(value).__name__} {value!r:.40}, not text. "
                    f"Fix: write it as a string, or choose another column."
                )
        if not text or not target or not text.strip() or not target.strip():
            self.empty_rows += 1
            return None
        return {"text": text, "target": target}

    def _bad(self, message: str) -> None:
        if not self.skip_bad_rows:
            raise UserError(f"{message} Or pass --skip_bad_rows to skip rows like it (counted and logged).")
        self.bad_rows += 1
        if self.bad_rows <= BAD_ROWS_LOGGED:
            logger.warning("Skipped a bad row (--skip_bad_rows): %s", message)
        elif self.bad_rows == BAD_ROWS_LOGGED + 1:
            logger.warning(
                "More bad rows skipped: counted, not named (%s_bad_rows_skipped in the results).",
                RESULTS_PREFIX.get(self.split, self.split),
            )
        return None


# --------------------------------------------------------------------------- the training stream


def torch_iterable_base():
    try:
        from torch.utils.data import IterableDataset
    except ModuleNotFoundError:  # the TensorFlow recipe's stack (.venv-tf) has no torch and never streams
        return object
    return IterableDataset


class TrainingStream(torch_iterable_base()):
    """The endless training examples (tokenized), block by block, for a DataLoader (no workers).

    `encode(texts, targets)` returns the model inputs of a block as lists; `group_size` is the
    global batch (per-device x processes x accumulation): consecutive groups of that many
    examples have similar lengths, so each step's batches pad little on every process.
    """

    def __init__(
        self,
        corpus: Corpus,
        encode: Callable[[list[str], list[str]], dict],
        *,
        block_size: int,
        group_size: int,
        seed: int,
        order: str = "group_by_length",  # or "random", "sequential"
    ):
        self.corpus, self.encode = corpus, encode
        corpus.seed, corpus.shuffle = seed, order != "sequential"  # each pass after the first: files in a new order
        self.block_size, self.group_size, self.seed, self.order = block_size, group_size, seed, order
        self.start = StreamPosition()
        # (start, examples, the next block's start) of the blocks read lately
        self.blocks: deque = deque(maxlen=256)
        self.passes_started = 0

    def resume(self, state: dict | None) -> None:
        """Continue from a checkpoint's position (`position_at`'s dict)."""
        if state:
            self.start = StreamPosition.from_dict(state)
            logger.info(
                "Resuming the training stream: pass %d, block %d, %d examples into it (%d before it); "
                "only that block is read again.",
                self.start.pass_number,
                self.start.block,
                self.start.skip,
                self.start.examples_before,
            )

    def position_at(self, consumed: int) -> dict:
        """The position after `consumed` examples (steps x the global batch), for a checkpoint."""
        for start, size, following in reversed(self.blocks):
            if consumed == start.examples_before + size:  # a block used up: resume at the next, reading none again
                return {**following.to_dict(), "skip": 0}
            if start.examples_before <= consumed < start.examples_before + size:
                return {**start.to_dict(), "skip": consumed - start.examples_before}
        raise RuntimeError(f"the stream no longer knows where example {consumed} is")

    def __iter__(self):
        position, skip = StreamPosition(**{**self.start.to_dict(), "skip": 0}), self.start.skip
        while True:
            pass_started_with = position.examples_before
            rows = self.corpus.rows_of_pass(position)
            block_start = position  # the first block starts where the pass (or the resumed block) starts
            while True:
                block = [row for _, row in _take(rows, self.block_size)]
                if not block:
                    break
                # Where the next block starts is known now (the reader stops after this block's last row).
                following = self._next_block_start(block_start, len(block))
                self.blocks.append((block_start, len(block), following))
                features = self.encode([r["text"] for r in block], [r["target"] for r in block])
                examples = [{key: values[i] for key, values in features.items()} for i in range(len(block))]
                for index in self.block_order(examples, block_start)[skip:]:
                    yield examples[index]
                skip = 0
                block_start = following
            # No row in a whole pass (a resume at the very end of a pass reads none, rightly).
            if block_start.examples_before == pass_started_with and position.used_in_pass == 0:
                raise UserError(self._no_rows_message())
            self._log_pass_end(block_start)
            position = StreamPosition(
                pass_number=block_start.pass_number + 1, examples_before=block_start.examples_before
            )

    def _next_block_start(self, previous: StreamPosition, size: int) -> StreamPosition:
        """The position before the next row: the file being read and the place in it."""
        file_index, source = self.corpus.current
        return StreamPosition(
            pass_number=previous.pass_number,
            block=previous.block + 1,
            file=file_index,
            place=source.place if source is not None else None,
            used_in_pass=previous.used_in_pass + size,
            examples_before=previous.examples_before + size,
        )

    def block_order(self, examples: list[dict], start: StreamPosition) -> list[int]:
        import torch

        if self.order == "sequential":
            return list(range(len(examples)))
        seed = derived_seed(self.seed, start.pass_number, start.block)
        if self.order == "random":
            return torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()

        lengths = [len(example["input_ids"]) for example in examples]
        return list(LengthGroupedSampler(lengths, self.group_size, seed))

    def _no_rows_message(self) -> str:
        text, target = self.corpus.words
        return (
            f"the training stream has no usable rows: every row has an empty {self.corpus.text_column!r} or "
            f"{self.corpus.target_column!r} ({text} / {target}). Fix: fill them in, or choose other columns."
        )

    def _log_pass_end(self, position: StreamPosition) -> None:
        corpus = self.corpus
        logger.info(
            "Training stream: pass %d done (%d examples so far; %d rows with an empty %s dropped%s); starting pass %d.",
            position.pass_number,
            position.examples_before,
            corpus.empty_rows,
            " or ".join(corpus.words),
            f", {corpus.bad_rows} bad rows skipped" if corpus.skip_bad_rows else "",
            position.pass_number + 1,
        )


def _take(rows: Iterator, count: int) -> Iterator:
    for _ in range(count):
        row = next(rows, None)
        if row is None:
            return
        yield row


# --------------------------------------------------------------------------- evaluation and prediction


class EvaluationStream:
    """A validation or test split read as a stream (--streaming): one pass, in the files' order.

    `windows()` yields the split's tokenized examples (model inputs as lists, as `encode` returns
    them) in windows of `window` consecutive examples: generation sorts each window by length and
    writes its predictions in input order (seqtune.generation), so memory holds one window, however
    long the split. Every process reads the whole split and generates its share of each window.
    The stream can be read any number of times (each evaluation reads it again from the start).
    """

    def __init__(self, corpus: Corpus, encode: Callable[[list[str], list[str]], dict], *, window: int):
        self.corpus, self.encode, self.window = corpus, encode, window
        self.examples = 0  # examples in the last complete reading

    def windows(self) -> Iterator[dict]:
        corpus, count = self.corpus, 0
        corpus.empty_rows = corpus.bad_rows = 0  # counted afresh at each reading
        rows = corpus.rows_of_pass(StreamPosition())
        while True:
            block = [row for _, row in _take(rows, self.window)]
            if not block:
                break
            count += len(block)
            yield self.encode([r["text"] for r in block], [r["target"] for r in block])
        if not count:
            text, target = corpus.words
            raise UserError(
                f"the {corpus.split} stream has no usable rows: every row has an empty {corpus.text_column!r} or "
                f"{corpus.target_column!r} ({text} / {target}). Fix: fill them in, or choose other columns."
            )
        self.examples = count
        if corpus.empty_rows or corpus.bad_rows:
            logger.warning(
                "The %s stream: %d examples; %d rows with an empty %s dropped%s.",
                corpus.split,
                count,
                corpus.empty_rows,
                " or ".join(corpus.words),
                f", {corpus.bad_rows} bad rows skipped (--skip_bad_rows)" if corpus.skip_bad_rows else "",
            )
