"""Data: where the rows come from, which columns, validation, sample caps, tokenization.

Every problem a user can fix becomes a `UserError` naming the file, the line (and the
column where it is known) and the fix. This module knows nothing of training loops:
the Trainer and the Accelerate recipes call the same functions.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from dataclasses import dataclass

import datasets
from datasets import DatasetDict

from .arguments import DataArguments, LoopArguments, ModelArguments, TranslationDataArguments
from .errors import UserError
from .progress import phase
from .streaming import Corpus, HubStream, expand_train_files, open_file
from .tasks import TRANSLATION, Task, task_of

logger = logging.getLogger(__name__)

# File extension -> datasets' builder name.
FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}

# Text and summary columns of well-known summarization data sets, so that their users
# need no --text_column/--summary_column (a folder with the same name counts too).
KNOWN_COLUMNS = {
    "amazon_reviews_multi": ("review_body", "review_title"),
    "big_patent": ("description", "abstract"),
    "billsum": ("text", "summary"),
    "cnn_dailymail": ("article", "highlights"),
    "gigaword": ("document", "summary"),
    "multi_news": ("document", "summary"),
    "orange_sum": ("text", "summary"),
    "pn_summary": ("article", "summary"),
    "psc": ("extract_text", "summary_text"),
    "reddit_tifu": ("documents", "tldr"),
    "samsum": ("dialogue", "summary"),
    "scientific_papers": ("article", "abstract"),
    "thaisum": ("body", "summary"),
    "wiki_summary": ("article", "highlights"),
    "wikihow": ("text", "headline"),
    "xglue": ("news_body", "news_title"),
    "xlsum": ("text", "summary"),
    "xsum": ("document", "summary"),
}

SPLIT_FILE_FLAGS = {"train": "train_file", "validation": "validation_file", "test": "test_file"}
# Why a run needs each split, in the words of the script that runs (see `split_needs`); {trainer}
# and {loop} are the task's script names (run_summarization.py, run_translation_no_trainer.py, ...).
TRAINER_SPLIT_NEEDS = {
    "train": "--do_train needs a train split",
    "validation": "--do_eval (also set by --eval_strategy steps or epoch) needs a validation split",
    "test": "--do_predict needs a test split",
}
LOOP_SPLIT_NEEDS = {
    "train": "the Accelerate script ({loop}) always trains and needs a train split",
    "validation": "the Accelerate script ({loop}) evaluates after every epoch and needs a validation split",
    "test": "--do_predict needs a test split",
}
# When the caller does not say which script runs: right for both.
ANY_SCRIPT_SPLIT_NEEDS = {
    "train": "training needs a train split ({trainer} trains with --do_train; the Accelerate script "
    "{loop} always does)",
    "validation": "evaluation needs a validation split ({trainer} evaluates with --do_eval or "
    "--eval_strategy; the Accelerate script {loop} after every epoch)",
    "test": "--do_predict needs a test split",
}
SPLIT_CAP_FLAGS = {"train": "max_train_samples", "validation": "max_eval_samples", "test": "max_predict_samples"}


@dataclass
class RawData:
    """The raw splits a run needs, with the two columns it uses."""

    splits: DatasetDict
    text_column: str
    summary_column: str
    source: str  # a short description for logs, reports and model cards
    train_corpus: Corpus | None = None  # --streaming: the train split, read as training goes (not in `splits`)
    eval_corpora: dict | None = None  # --streaming: the validation and test splits' Corpus (not in `splits`)


# --------------------------------------------------------------------------- files


def _decoded_lines(path: str):
    """Yield (line number, text) of a UTF-8 file; a bad byte is a UserError with its place."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise UserError(
                    f"{path}, line {number}, column {error.start + 1}: the file is not valid UTF-8 "
                    f"(byte 0x{raw[error.start]:02x}). Fix: re-save the file with UTF-8 encoding."
                ) from None
            yield number, text


def _validate_csv(path: str) -> list[str]:
    # A long document is not malformed: lift the csv module's 128 KiB limit per field (pandas has none).
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    lines = _decoded_lines(path)
    reader = csv.reader((text for _, text in lines), strict=True)
    record_start = 1
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise UserError(f"{path} is empty: it needs a header line naming the columns, then one row per example.")
        blank = [i + 1 for i, name in enumerate(header) if not name.strip()]
        if blank:
            raise UserError(
                f"{path}, line 1, column {blank[0]}: the header has an empty column name. Fix: name every column."
            )
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise UserError(
                f"{path}, line 1: the header names column {duplicates[0]!r} twice. Fix: give each column its own name."
            )
        rows = 0
        while True:
            record_start = reader.line_num + 1  # a row may span lines (a quoted line break)
            row = next(reader, None)
            if row is None:
                break
            if not row:  # a blank line
                continue
            rows += 1
            if len(row) != len(header):
                raise UserError(
                    f"{path}, line {reader.line_num}: expected {len(header)} fields ({', '.join(header)}), "
                    f"found {len(row)}. Fix: quote fields that contain commas or line breaks with double quotes."
                )
    except csv.Error as error:
        at_end = next(lines, None) is None  # the reader asked for more lines and got none
        opened = _unclosed_quote(path) if at_end else None
        if opened is not None:  # the file ends inside a quoted field: name where it opens, not the last line
            raise UserError(
                f"{path}, line {opened[0]}, column {opened[1]}: this double quote opens a field that is never "
                f'closed (the file ends inside it). Fix: close the quote, and write quotes inside a field as "".'
            ) from None
        where = (
            f" (this row starts on line {record_start}: check the double quotes there)"
            if record_start < reader.line_num
            else ""
        )
        raise UserError(
            f"{path}, line {reader.line_num}: malformed CSV ({error}){where}. Fix: close every double quote and "
            f'write quotes inside a field as "".'
        ) from None
    except UnicodeDecodeError:  # pragma: no cover - _decoded_lines reports it
        raise
    if rows == 0:
        raise UserError(f"{path} has a header but no rows: add at least one example.")
    return header


def _unclosed_quote(path: str) -> tuple[int, int] | None:
    """(line, column) of the double quote that opens a field still open at the end of the file, if any.

    Follows the csv module's rules (comma-separated, fields quoted with "...", "" inside them).
    """
    state, opened = "start", None  # start of a field, "plain" field, "quoted" field, "quote" seen inside one
    for number, text in _decoded_lines(path):
        for column, char in enumerate(text, start=1):
            if state == "quoted":
                if char == '"':
                    state = "quote"
            elif state == "quote" and char == '"':
                state = "quoted"  # "" inside a quoted field
            elif char in ",\r\n":
                state = "start"
            elif state == "start" and char == '"':
                state, opened = "quoted", (number, column)
            else:
                state = "plain"
    return opened if state == "quoted" else None


_JSON_TYPE_NAMES = {
    str: "text",
    bool: "true/false",
    int: "a number",
    float: "a number",
    list: "a list",
    dict: "an object",
}


class _ColumnTypes:
    """Remembers where each column was first seen with each JSON type, to report conflicts."""

    def __init__(self, path: str):
        self.path = path
        self.first_seen: dict[str, tuple[str, int]] = {}
        self.order: list[str] = []

    def add(self, record, line: int, where: str):
        if not isinstance(record, dict):
            raise UserError(
                f'{self.path}, {where}: expected an object like {{"text": ..., "summary": ...}}, '
                f"found {_JSON_TYPE_NAMES.get(type(record), type(record).__name__)}. Fix: one JSON object per example."
            )
        for key, value in record.items():
            if value is None:
                continue
            kind = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
            seen = self.first_seen.get(key)
            if seen is None:
                self.first_seen[key] = (kind, line)
                self.order.append(key)
            elif seen[0] != kind:
                raise UserError(
                    f"{self.path}, {where}: column {key!r} holds {kind} here but {seen[0]} on line {seen[1]}. "
                    f"Fix: give every row the same type in that column (quote numbers meant as text)."
                )


def _too_deep(path: str, where: str) -> UserError:
    """Python's JSON parser gives up on thousands of nested brackets (RecursionError)."""
    return UserError(
        f"{path}, {where}: the JSON is nested too deeply to read. Fix: write one flat object per example, "
        f'e.g. {{"text": ..., "summary": ...}}.'
    )


def _validate_json_lines(path: str) -> list[str]:
    types = _ColumnTypes(path)
    rows = 0
    for number, text in _decoded_lines(path):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(
                f"{path}, line {number}, column {error.colno}: invalid JSON ({error.msg}). "
                f"Fix: write one complete JSON object per line (JSON Lines)."
            ) from None
        except RecursionError:
            raise _too_deep(path, f"line {number}") from None
        types.add(record, number, f"line {number}")
        rows += 1
    if rows == 0:
        raise UserError(f'{path} is empty: write one JSON object per line, e.g. {{"text": ..., "summary": ...}}.')
    return types.order


def _validate_json(path: str) -> tuple[list[str], str | None]:
    """A .json file is JSON Lines, a list of objects, or an object holding one such list."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if not head.startswith(b"["):
        # Either JSON Lines or one object; try the whole file as one document first.
        if head.startswith(b"{"):
            document = _try_parse_whole(path)
            if isinstance(document, dict):
                lists = [key for key, value in document.items() if isinstance(value, list)]
                if len(lists) == 1 and all(isinstance(v, list) for v in document.values()) and len(document) == 1:
                    return _validate_records(path, document[lists[0]]), lists[0]
        return _validate_json_lines(path), None
    document = _try_parse_whole(path, strict=True)
    return _validate_records(path, document), None


def _try_parse_whole(path: str, strict: bool = False):
    text = "".join(t for _, t in _decoded_lines(path))
    try:
        return json.loads(text)
    except RecursionError:
        raise _too_deep(path, "line 1") from None
    except json.JSONDecodeError as error:
        if strict:
            raise UserError(
                f"{path}, line {error.lineno}, column {error.colno}: invalid JSON ({error.msg}). "
                f"Fix: correct the JSON, or write one object per line as JSON Lines (.jsonl)."
            ) from None
        return None


def _validate_records(path: str, records) -> list[str]:
    if not isinstance(records, list):
        raise UserError(f'{path}: expected a list of objects. Fix: write [{{"text": ..., "summary": ...}}, ...].')
    types = _ColumnTypes(path)
    for index, record in enumerate(records):
        types.add(record, index + 1, f"record {index + 1}")
    if not records:
        raise UserError(f"{path} holds no records: add at least one example.")
    return types.order


def _validate_parquet(path: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
        schema = pq.read_schema(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise UserError(
            f"{path} is not a readable Parquet file ({error}). "
            f"Fix: write it again, e.g. with pandas.DataFrame.to_parquet."
        ) from None
    if metadata.num_rows == 0:
        raise UserError(f"{path} has no rows: add at least one example.")
    return list(schema.names)


def validate_data_file(path: str, flag: str) -> tuple[str, list[str], dict]:
    """Check one data file before datasets reads it; return (builder, columns, builder kwargs)."""
    if not os.path.exists(path):
        raise UserError(f"--{flag} {path}: no such file. Fix: check the path (relative paths start at {os.getcwd()}).")
    if os.path.isdir(path):
        raise UserError(
            f"--{flag} {path} is a folder. Fix: pass a .csv, .json, .jsonl or .parquet file, "
            f"or use --dataset_name for a data set folder."
        )
    extension = os.path.splitext(path)[1].lower()
    builder = FILE_BUILDERS.get(extension)
    if builder is None:
        raise UserError(
            f"--{flag} {path}: unsupported file type {extension or '(no extension)'!r}. "
            f"Fix: use one of {', '.join(sorted(FILE_BUILDERS))}."
        )
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty: add at least one example.")
    kwargs: dict = {}
    if builder == "csv":
        columns = _validate_csv(path)
        # Read every column as text: a summary column of digits stays text, empty cells become None.
        kwargs["features"] = datasets.Features({name: datasets.Value("string") for name in columns})
    elif builder == "parquet":
        columns = _validate_parquet(path)
    elif extension == ".jsonl":
        columns = _validate_json_lines(path)
    else:
        columns, field_name = _validate_json(path)
        if field_name is not None:
            kwargs["field"] = field_name
    if not columns:  # e.g. [{}, {}]: datasets would fail with "corresponds to no data"
        raise UserError(
            f"{path}: no column holds a value in any row. Fix: give every example its fields, "
            f'e.g. {{"text": ..., "summary": ...}}.'
        )
    return builder, columns, kwargs


# --------------------------------------------------------------------------- columns


def known_columns_for(dataset_name: str | None) -> tuple[str, str] | None:
    """Columns of a well-known data set, by hub id (any namespace) or local folder name."""
    if not dataset_name:
        return None
    base = os.path.basename(os.path.normpath(dataset_name)).lower()
    return KNOWN_COLUMNS.get(base)


def _column_flags(task: Task) -> str:
    return "/".join(f"--{flag}" for flag in task.column_flags)


def _language_columns(column_names: list[str], data_args: DataArguments) -> tuple[str | None, str | None]:
    """Translation: the columns named after --source_lang/--target_lang (flattened `translation.en` or `en`)."""
    found = []
    for language in data_args.languages:
        key = TranslationDataArguments.data_key(language)
        names = [name for name in (f"translation.{key}", key) if key and name in column_names]
        found.append(names[0] if names else None)
    return found[0], found[1]


def resolve_columns(column_names: list[str], data_args: DataArguments, where: str) -> tuple[str, str]:
    """The input and target columns: from the flags, from the known data set (summarization) or the
    languages (translation), else the first two."""
    task = task_of(data_args)
    (text_flag, target_flag), (text_word, target_word) = task.column_flags, task.column_words
    if task is TRANSLATION:
        known = _language_columns(column_names, data_args)
    else:
        known = known_columns_for(data_args.dataset_name) or (None, None)
    text_column = data_args.text_column or known[0]
    summary_column = data_args.summary_column or known[1]
    if text_column is None or summary_column is None:
        remaining = [c for c in column_names if c not in (text_column, summary_column)]
        if len(column_names) < 2:
            raise UserError(
                f"{where} has only the column(s) {column_names}: seqtune needs a {text_word} column and a "
                f"{target_word} column. Fix: add them, or name them with --{text_flag} and --{target_flag}."
            )
        text_column = text_column or remaining.pop(0)
        summary_column = summary_column or remaining.pop(0)
    for flag, name in ((text_flag, text_column), (target_flag, summary_column)):
        if name not in column_names:
            raise UserError(
                f"--{flag} {name!r} is not a column of {where}; its columns are: {', '.join(column_names)}. "
                f"Fix: pass --{flag} with one of them."
            )
    if text_column == summary_column:
        raise UserError(
            f"the {text_word} and {target_word} columns are both {text_column!r}. Fix: pass two different columns."
        )
    return text_column, summary_column


def flatten_translations(dataset, data_args: DataArguments, where: str):
    """Nested translations ({"translation": {"en": ..., "ro": ...}}, as wmt16 has them) as flat columns
    (`translation.en`, `translation.ro`), after checking that the languages asked for are there."""
    nested = [name for name, feature in dataset.features.items() if isinstance(feature, dict)]
    if not nested:
        return dataset
    column = nested[0]
    languages = list(dataset.features[column])
    if data_args.text_column is None or data_args.summary_column is None:
        for flag, language in zip(("source_lang", "target_lang"), data_args.languages):
            if language is None:
                raise UserError(
                    f"{where} holds translations in the column {column!r} with the languages "
                    f"{', '.join(languages)}: which is the source and which the target? Fix: pass --source_lang "
                    f"and --target_lang (e.g. --source_lang {languages[0]} --target_lang {languages[-1]})."
                )
            key = TranslationDataArguments.data_key(language)
            if key not in languages:
                raise UserError(
                    f"--{flag} {language}: the column {column!r} of {where} has no {key!r} texts; its languages are "
                    f"{', '.join(languages)}. Fix: pass --{flag} with one of them."
                )
    return dataset.flatten()


# --------------------------------------------------------------------------- loading


def _load_from_files(
    data_args: DataArguments, model_args: ModelArguments, wanted: list[str]
) -> tuple[DatasetDict, dict]:
    splits = {}
    columns_by_split = {}
    for split in wanted:
        flag = SPLIT_FILE_FLAGS[split]
        path = getattr(data_args, flag)
        if path is None:
            continue
        splits[split] = load_data_file(path, flag, split, model_args.cache_dir)
        columns_by_split[split] = path
    return DatasetDict(splits), columns_by_split


def load_data_file(path: str, flag: str, split: str = "train", cache_dir: str | None = None):
    """Validate one .csv/.json/.jsonl/.parquet file (see `validate_data_file`) and load it as a Dataset."""
    builder, columns, kwargs = validate_data_file(path, flag)
    try:
        loaded = datasets.load_dataset(
            builder, data_files={split: os.path.abspath(path)}, cache_dir=cache_dir, **kwargs
        )
    except Exception as error:  # the file passed our checks; report what datasets says about it
        cause = error.__cause__ or error.__context__  # "An error occurred while generating the dataset" hides it
        detail = f"{error} ({type(cause).__name__}: {cause})" if cause is not None else str(error)
        raise UserError(f"could not read {path}: {detail}. Fix: check the file's format.") from None
    return loaded[split]


def read_text_file(path: str, flag: str) -> list[tuple[int, str]]:
    """The (line number, text) lines of a UTF-8 text file; a missing file or a bad byte is a UserError."""
    if not os.path.exists(path):
        raise UserError(f"{flag} {path}: no such file. Fix: check the path (relative paths start at {os.getcwd()}).")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder. Fix: pass the files in it (e.g. {os.path.join(path, '*.txt')}).")
    return list(_decoded_lines(path))


def _load_named_dataset(data_args: DataArguments, model_args: ModelArguments) -> DatasetDict:
    name = data_args.dataset_name
    try:
        loaded = datasets.load_dataset(
            name, data_args.dataset_config_name, cache_dir=model_args.cache_dir, token=model_args.token
        )
    except FileNotFoundError as error:
        raise UserError(
            f"data set {name!r} was not found ({error}). Fix: check the name; offline (HF_HUB_OFFLINE=1), pass the "
            f"path of a local data set folder, or use --train_file/--validation_file/--test_file."
        ) from None
    except ValueError as error:  # e.g. an unknown config name, with the available ones listed
        raise UserError(f"data set {name!r}: {error}") from None
    except Exception as error:  # network, auth, corrupt download: all fixable by the user
        raise UserError(
            f"could not load data set {name!r} ({type(error).__name__}: {error}). Fix: check the name, your network "
            f"and token, or pass a local folder or files."
        ) from None
    if not isinstance(loaded, DatasetDict):
        loaded = DatasetDict({"train": loaded})
    return loaded


def load_raw_data(
    data_args: DataArguments,
    model_args: ModelArguments,
    wanted: list[str],
    needs: dict[str, str] | None = None,
) -> RawData:
    """Load the splits the run needs (train/validation/test), validated, filtered and capped.

    `needs`: why the run needs each split, for the message when one is missing (`split_needs(run_args)`).
    """
    have_files = any(getattr(data_args, flag) for flag in SPLIT_FILE_FLAGS.values())
    if data_args.dataset_name is None and not have_files:
        raise UserError(
            "no data given. Fix: pass --dataset_name (a hub data set or local folder) or "
            "--train_file/--validation_file/--test_file (or run `seqtune demo` for the built-in example)."
        )
    if data_args.dataset_name is not None and have_files:
        raise UserError("pass either --dataset_name or data files (--train_file/...), not both.")
    if data_args.streaming:
        return _streamed_splits(data_args, model_args, wanted, needs)

    if data_args.dataset_name is not None:
        loaded = _load_named_dataset(data_args, model_args)
        where = {split: f"data set {data_args.dataset_name!r} split {split!r}" for split in loaded}
        source = data_args.dataset_name + (
            f" ({data_args.dataset_config_name})" if data_args.dataset_config_name else ""
        )
    else:
        loaded, paths = _load_from_files(data_args, model_args, wanted)
        where = paths
        source = ", ".join(os.path.basename(p) for p in paths.values())

    task = task_of(data_args)
    for split in wanted:
        if split not in loaded:
            flag = SPLIT_FILE_FLAGS[split]
            need = (needs or ANY_SCRIPT_SPLIT_NEEDS)[split].format(trainer=task.trainer_script, loop=task.loop_script)
            if data_args.dataset_name is None:
                raise UserError(f"{need}. Fix: pass --{flag}.")
            raise UserError(
                f"{need}, and data set {data_args.dataset_name!r} has only the splits "
                f"{', '.join(loaded) or '(none)'}. Fix: choose a data set (or --dataset_config_name) with a {split} "
                f"split, or pass every split as a file (--train_file, --{flag}, ...) instead of --dataset_name."
            )
    splits = DatasetDict({split: loaded[split] for split in wanted})
    if not splits:
        raise UserError("nothing to do: pass at least one of --do_train, --do_eval, --do_predict.")

    if task is TRANSLATION:
        splits = DatasetDict(
            {split: flatten_translations(dataset, data_args, where[split]) for split, dataset in splits.items()}
        )
    first = wanted[0]
    text_column, summary_column = resolve_columns(splits[first].column_names, data_args, where[first])
    for split, dataset in splits.items():
        if split != first:
            resolve_columns(dataset.column_names, data_args, where[split])  # same columns everywhere
        for column in (text_column, summary_column):
            dtype = getattr(dataset.features[column], "dtype", None)
            if dtype not in ("string", "large_string"):
                raise UserError(
                    f"column {column!r} of {where[split]} holds {dtype or type(dataset.features[column]).__name__}, "
                    f"not text. Fix: choose a text column with {_column_flags(task)}."
                )

    splits = DatasetDict(
        {
            split: _drop_empty_rows(
                dataset, text_column, summary_column, where[split], getattr(data_args, SPLIT_CAP_FLAGS[split]), task
            )
            for split, dataset in splits.items()
        }
    )
    return RawData(splits=splits, text_column=text_column, summary_column=summary_column, source=source)


def _streamed_splits(
    data_args: DataArguments, model_args: ModelArguments, wanted: list[str], needs: dict[str, str] | None
) -> RawData:
    """--streaming: every wanted split as a `Corpus` (checked from its first rows only), nothing loaded whole.

    The train split is read endlessly (`streaming.TrainingStream`), the validation and test splits once per
    evaluation (`streaming.EvaluationStream`), capped by --max_eval_samples / --max_predict_samples.
    """
    task = task_of(data_args)
    if data_args.dataset_name is not None:
        streams = _stream_named_dataset(data_args, model_args, wanted, needs)
        sources = {split: [HubStream(stream, data_args.dataset_name, split)] for split, stream in streams.items()}
        where = {split: f"data set {data_args.dataset_name!r} split {split!r}" for split in streams}
        source = data_args.dataset_name + (
            f" ({data_args.dataset_config_name})" if data_args.dataset_config_name else ""
        )
    else:
        sources, where, names = {}, {}, []
        for split in wanted:
            flag = SPLIT_FILE_FLAGS[split]
            pattern = getattr(data_args, flag)
            if pattern is None:
                need = (needs or ANY_SCRIPT_SPLIT_NEEDS)[split].format(
                    trainer=task.trainer_script, loop=task.loop_script
                )
                raise UserError(f"{need}. Fix: pass --{flag}.")
            paths = expand_train_files(pattern, f"--{flag}")
            sources[split], where[split] = [open_file(path) for path in paths], paths[0]
            names.append(os.path.basename(paths[0]) + (f" and {len(paths) - 1} more files" if len(paths) > 1 else ""))
        source = ", ".join(names)
    if not sources:
        raise UserError("nothing to do: pass at least one of --do_train, --do_eval, --do_predict.")
    first = wanted[0]
    text_column, summary_column = resolve_columns(sources[first][0].columns(), data_args, where[first])
    for split, split_sources in sources.items():
        # Every file has the columns (its header, schema or first row: nothing more is read).
        for other in split_sources:
            if other is not sources[first][0] and not {text_column, summary_column} <= set(other.columns()):
                raise UserError(
                    f"{getattr(other, 'path', where[split])} has the columns {', '.join(other.columns())}, not "
                    f"{text_column!r} and {summary_column!r} as {where[first]}. Fix: give every split and every file "
                    f"the same columns, or name them with {_column_flags(task)}."
                )
            if hasattr(other, "wanted"):  # Parquet: read only the two columns' top-level parents
                other.wanted = sorted({text_column.split(".")[0], summary_column.split(".")[0]})
    corpora = {
        split: Corpus(
            split_sources,
            text_column,
            summary_column,
            cap=getattr(data_args, SPLIT_CAP_FLAGS[split]),
            skip_bad_rows=data_args.skip_bad_rows,
            words=task.column_words,
            split=split,
        )
        for split, split_sources in sources.items()
    }
    for split in ("validation", "test"):  # one usable row, or stop now rather than after training
        if split in corpora and not corpora[split].first_rows(1):
            raise UserError(
                f"{where[split]} has no usable rows: every row has an empty {text_column!r} or {summary_column!r}. "
                f"Fix: fill them in, or choose other columns with {_column_flags(task)}."
            )
    return RawData(
        DatasetDict(),
        text_column,
        summary_column,
        f"{source} (streamed)",
        train_corpus=corpora.pop("train", None),
        eval_corpora=corpora,
    )


def _stream_named_dataset(
    data_args: DataArguments, model_args: ModelArguments, wanted: list[str], needs: dict[str, str] | None
) -> dict:
    """The wanted splits of a hub data set (or a local data set folder) as datasets' streams."""
    name = data_args.dataset_name
    try:
        streams = datasets.load_dataset(
            name, data_args.dataset_config_name, streaming=True, cache_dir=model_args.cache_dir, token=model_args.token
        )
    except FileNotFoundError as error:
        raise UserError(
            f"data set {name!r} was not found ({error}). Fix: check the name; offline (HF_HUB_OFFLINE=1), pass the "
            f"path of a local data set folder, or use --train_file/--validation_file/--test_file."
        ) from None
    except ValueError as error:  # an unknown config
        raise UserError(f"data set {name!r}: {error}") from None
    except Exception as error:  # network, auth: fixable by the user
        raise UserError(
            f"could not stream data set {name!r} ({type(error).__name__}: {error}). Fix: check the name, your "
            f"network and token, or pass local files."
        ) from None
    if not isinstance(streams, dict):
        streams = {"train": streams}
    task = task_of(data_args)
    for split in wanted:
        if split not in streams:
            need = (needs or ANY_SCRIPT_SPLIT_NEEDS)[split].format(trainer=task.trainer_script, loop=task.loop_script)
            raise UserError(
                f"{need}, and data set {name!r} has only the splits {', '.join(streams) or '(none)'}. Fix: choose a "
                f"data set (or --dataset_config_name) with a {split} split, or pass every split as a file "
                f"(--train_file, --{SPLIT_FILE_FLAGS[split]}, ...) instead of --dataset_name."
            )
    return {split: streams[split] for split in wanted}


def _drop_empty_rows(dataset, text_column: str, summary_column: str, where: str, cap: int | None, task: Task):
    """Drop rows whose text or summary is empty, then keep the first `cap` rows."""
    texts = dataset[text_column]
    summaries = dataset[summary_column]
    keep = [
        index
        for index, (text, summary) in enumerate(zip(texts, summaries))
        if text is not None and summary is not None and text.strip() and summary.strip()
    ]
    dropped = len(dataset) - len(keep)
    if dropped:
        words = " or ".join(task.column_words)
        logger.warning("%s: dropped %d of %d rows with an empty %s.", where, dropped, len(dataset), words)
    if not keep:
        raise UserError(
            f"{where} has no usable rows: every row has an empty {text_column!r} or {summary_column!r}. "
            f"Fix: fill them in, or choose other columns with {_column_flags(task)}."
        )
    if cap is not None:
        keep = keep[:cap]
    if dropped or len(keep) < len(dataset):
        dataset = dataset.select(keep)
    return dataset


# --------------------------------------------------------------------------- preprocessing


def tokenize_split(
    dataset,
    tokenizer,
    data_args: DataArguments,
    text_column: str,
    summary_column: str,
    max_target_length: int,
    description: str,
    main_process_first=contextlib.nullcontext,
):
    """Tokenize one split: prefixed inputs to `input_ids`, summaries to `labels` (cached by datasets)."""
    encode = text_encoder(tokenizer, data_args, max_target_length)

    def preprocess(batch):
        return encode(batch[text_column], batch[summary_column])

    with main_process_first(), phase(description, total=len(dataset)):
        return dataset.map(
            preprocess,
            batched=True,
            num_proc=tokenization_workers(data_args.preprocessing_num_workers, len(dataset)),
            remove_columns=dataset.column_names,
            load_from_cache_file=not data_args.overwrite_cache,
            desc=description,
        )


def text_encoder(tokenizer, data_args: DataArguments, max_target_length: int):
    """encode(texts, targets) -> model inputs (lists): the prefixed texts to `input_ids`, the targets to `labels`."""
    prefix = data_args.source_prefix or ""
    padding = "max_length" if data_args.pad_to_max_length else False
    mask_padding = padding == "max_length" and data_args.ignore_pad_token_for_loss
    max_source_length = data_args.max_source_length

    def encode(texts: list[str], targets: list[str]) -> dict:
        model_inputs = tokenizer(
            [prefix + text for text in texts], max_length=max_source_length, padding=padding, truncation=True
        )
        label_ids = tokenizer(text_target=targets, max_length=max_target_length, padding=padding, truncation=True)[
            "input_ids"
        ]
        if mask_padding:
            label_ids = [[(t if t != tokenizer.pad_token_id else -100) for t in ids] for ids in label_ids]
        model_inputs["labels"] = label_ids
        return model_inputs

    return encode


# Below this many rows, starting worker processes costs more than it saves.
PARALLEL_TOKENIZATION_ROWS = 50_000


def tokenization_workers(requested: int | None, rows: int) -> int | None:
    """--preprocessing_num_workers when given; else worker processes for large splits only."""
    if requested is not None:
        return requested if requested > 1 else None
    if rows < PARALLEL_TOKENIZATION_ROWS:
        return None
    return min(os.cpu_count() or 1, 8) if (os.cpu_count() or 1) > 1 else None


def tokenize_splits(
    raw: RawData, tokenizer, data_args: DataArguments, main_process_first=contextlib.nullcontext
) -> DatasetDict:
    """Tokenize every split of `raw`: training targets up to max_target_length, others up to val_max_target_length."""
    tokenized = {}
    for split, dataset in raw.splits.items():
        target_length = data_args.max_target_length if split == "train" else data_args.val_max_target_length
        tokenized[split] = tokenize_split(
            dataset,
            tokenizer,
            data_args,
            raw.text_column,
            raw.summary_column,
            target_length,
            description=f"Tokenizing the {split} split",
            main_process_first=main_process_first,
        )
    return DatasetDict(tokenized)


def build_collator(tokenizer, model, data_args: DataArguments, pad_to_multiple_of: int | None = None):
    """Pad each batch to its longest example (or keep the fixed padding of --pad_to_max_length)."""
    from transformers import DataCollatorForSeq2Seq, default_data_collator

    if data_args.pad_to_max_length:
        return default_data_collator
    label_pad = -100 if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id
    return DataCollatorForSeq2Seq(
        tokenizer, model=model, label_pad_token_id=label_pad, pad_to_multiple_of=pad_to_multiple_of
    )


def wanted_splits(do_train: bool, do_eval: bool, do_predict: bool) -> list[str]:
    return [split for split, flag in (("train", do_train), ("validation", do_eval), ("test", do_predict)) if flag]


def split_needs(run_args) -> dict[str, str]:
    """Why a run needs each split, for `load_raw_data(needs=...)`: the Accelerate loop trains and
    evaluates whatever the flags say (its do_train/do_eval are fixed), the Trainer as asked."""
    return LOOP_SPLIT_NEEDS if isinstance(run_args, LoopArguments) else TRAINER_SPLIT_NEEDS
