"""Bad data at scale: hypothesis throws malformed files at seqtune.data.load_raw_data.

CSV, JSON Lines, JSON and Parquet files, built from random records and then damaged:
wrong encodings, stray bytes, truncation, huge fields, blank and garbage lines, missing,
extra, empty or wrongly typed columns, deep nesting, empty files, content that does not
match the extension. Every case must end in seqtune's UserError (one clear message) or
in a successful load whose rows are usable; any other exception, or a hang, fails.

Bounded for `make test`: 100 examples per format (SEQTUNE_FUZZ_EXAMPLES raises it
for a longer hunt), a generous per-example deadline as a hang guard, and a test timeout. The
examples are drawn the same way on every run, so CI judges the change and not the draw;
SEQTUNE_FUZZ_RANDOM=1 draws afresh (how new cases are found).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import tempfile
from datetime import timedelta

import pytest

hypothesis = pytest.importorskip("hypothesis")
import datasets  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from seqtune.arguments import DataArguments, ModelArguments  # noqa: E402
from seqtune.data import load_raw_data  # noqa: E402
from seqtune.errors import UserError  # noqa: E402

EXAMPLES = int(os.environ.get("SEQTUNE_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=30),  # a hang guard, not a speed test
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    database=None,
    derandomize=not os.environ.get("SEQTUNE_FUZZ_RANDOM"),
    print_blob=True,
)

COLUMN_NAMES = ["text", "summary", "document", "Text", "summary ", "", "id", "1"]


@pytest.fixture(scope="module", autouse=True)
def quiet_datasets():
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


class Workspace:
    """A fresh file name for every example (no stale cache can answer) and one datasets cache."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="seqtune-fuzz-")
        self.counter = itertools.count()

    def write(self, data: bytes, extension: str) -> str:
        path = os.path.join(self.root, f"f{next(self.counter)}{extension}")
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    def load(self, path: str, text_column=None, summary_column=None, cap=None):
        data_args = DataArguments(
            train_file=path, text_column=text_column, summary_column=summary_column, max_train_samples=cap
        )
        return load_raw_data(data_args, ModelArguments(cache_dir=os.path.join(self.root, "cache")), ["train"])


@pytest.fixture(scope="module")
def workspace():
    space = Workspace()
    yield space
    shutil.rmtree(space.root, ignore_errors=True)


def check(workspace: Workspace, data: bytes, extension: str, columns: tuple) -> str:
    """Load; only a UserError or a usable result may come out. Returns which, for statistics."""
    path = workspace.write(data, extension)
    try:
        raw = workspace.load(path, *columns)
    except UserError as error:
        message = str(error)
        assert message and "Traceback" not in message
        return "user error"
    dataset = raw.splits["train"]
    assert raw.text_column in dataset.column_names and raw.summary_column in dataset.column_names
    assert raw.text_column != raw.summary_column
    assert len(dataset) >= 1
    for text, summary in zip(dataset[raw.text_column], dataset[raw.summary_column]):
        assert isinstance(text, str) and isinstance(summary, str) and text.strip() and summary.strip()
    return "loaded"


# --------------------------------------------------------------------------- building blocks

huge_text = st.builds(
    lambda piece, count: piece * count,
    st.sampled_from(["a", "word ", "é", '"', ",", "x\n"]),
    st.integers(50_000, 200_000),
)
cell_text = st.one_of(st.text(max_size=30), st.text(alphabet="ab ,\"'\n\r\t;\\{}[]", max_size=12), huge_text)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), cell_text)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)
column_name = st.one_of(st.sampled_from(COLUMN_NAMES), st.text(max_size=6))
record = st.dictionaries(column_name, st.one_of(cell_text, cell_text, json_value), max_size=4)
good_record = st.fixed_dictionaries(
    {"text": st.text(min_size=1, max_size=40), "summary": st.text(min_size=1, max_size=20)}
)
# Mostly good rows with a bad one here and there, so that many files get past the first check
# and the later ones (datasets' reader, columns, types, empty rows) are exercised too.
records = st.one_of(
    st.lists(st.one_of(good_record, good_record, good_record, record), min_size=1, max_size=6),
    st.lists(record, max_size=3),
)
# Which columns the user names: mostly none (defaults), sometimes ones that may not exist.
maybe_column = st.one_of(st.none(), st.none(), st.none(), column_name)
column_flags = st.tuples(maybe_column, maybe_column)
encodings = st.sampled_from(["utf-8"] * 16 + ["utf-8-sig", "utf-16", "latin-1", "cp1252", "utf-32"])


def encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


@st.composite
def damage(draw, data: bytes) -> bytes:
    """Leave the bytes alone (mostly), or truncate them, or splice in random bytes."""
    how = draw(st.sampled_from(["none"] * 7 + ["truncate", "splice", "nul"]))
    if how == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "splice":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if how == "nul":
        return data.replace(b",", b"\0", 1)
    return data


# --------------------------------------------------------------------------- formats


@st.composite
def jsonl_files(draw) -> bytes:
    lines = []
    for row in draw(records):
        kind = draw(st.sampled_from(["record"] * 8 + ["garbage", "blank", "value"]))
        if kind == "record":
            lines.append(json.dumps(row, ensure_ascii=draw(st.booleans())))
        elif kind == "garbage":
            lines.append(draw(st.text(max_size=20)))
        elif kind == "value":
            lines.append(json.dumps(draw(json_value)))
        else:
            lines.append(draw(st.sampled_from(["", "   ", "\t"])))
    separator = draw(st.sampled_from(["\n", "\r\n", "\n\n"]))
    text = separator.join(lines) + draw(st.sampled_from(["", "\n"]))
    return draw(damage(encode(text, draw(encodings))))


@st.composite
def json_files(draw) -> bytes:
    rows = draw(records)
    shape = draw(st.sampled_from(["list"] * 4 + ["field", "field", "fields", "value", "deep", "lines", "lines"]))
    indent = draw(st.sampled_from([None, 2]))
    if shape == "list":
        text = json.dumps(rows, indent=indent)
    elif shape == "field":
        text = json.dumps({draw(st.sampled_from(["data", "rows", ""])): rows}, indent=indent)
    elif shape == "fields":
        text = json.dumps({"data": rows, "version": draw(json_value)}, indent=indent)
    elif shape == "value":
        text = json.dumps(draw(json_value), indent=indent)
    elif shape == "deep":  # deeper than Python's parser will go
        depth = draw(st.integers(2_000, 100_000))
        text = draw(st.sampled_from(["[", '{"text": '])) * depth
    else:
        text = "\n".join(json.dumps(row) for row in rows)
    return draw(damage(encode(text, draw(encodings))))


@st.composite
def csv_files(draw) -> bytes:
    rows = draw(records)
    header = draw(
        st.one_of(st.just(["text", "summary"]), st.just(["text", "summary"]), st.lists(column_name, max_size=4))
    )
    buffer = io.StringIO()
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
    delimiter = draw(st.sampled_from([","] * 6 + [";", "\t"]))
    writer = csv.writer(
        buffer, quoting=quoting, delimiter=delimiter, lineterminator=draw(st.sampled_from(["\n", "\r\n"]))
    )
    if draw(st.integers(0, 3)) or not rows:  # mostly a header line
        writer.writerow(header)
    for row in rows:
        values = [value if isinstance(value, str) else json.dumps(value) for value in row.values()]
        if draw(st.integers(0, 3)):  # as many cells as the header, mostly
            values = (values + [""] * len(header))[: len(header)]
        writer.writerow(values)
    text = buffer.getvalue()
    if draw(st.integers(0, 5)) == 0:  # a hand-made line: stray quotes, too many fields
        text += draw(st.text(alphabet='ab,"\n ', max_size=15))
    return draw(damage(encode(text, draw(encodings))))


@st.composite
def parquet_files(draw) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = draw(st.one_of(st.integers(1, 5), st.integers(1, 5), st.just(0)))
    kinds = {
        "string": (pa.string(), st.one_of(st.none(), cell_text)),
        "large_string": (pa.large_string(), st.text(max_size=10)),
        "int": (pa.int64(), st.one_of(st.none(), st.integers(-(2**62), 2**62))),
        "float": (pa.float64(), st.floats(allow_nan=True)),
        "bool": (pa.bool_(), st.booleans()),
        "list": (pa.list_(pa.string()), st.lists(st.text(max_size=4), max_size=3)),
        "struct": (pa.struct([("a", pa.string())]), st.fixed_dictionaries({"a": st.text(max_size=4)})),
        "binary": (pa.binary(), st.binary(max_size=10)),
        "null": (pa.null(), st.none()),
    }
    names = draw(st.lists(column_name, min_size=0, max_size=4, unique=True))
    if draw(st.integers(0, 2)):
        names = ["text", "summary"] + [n for n in names if n not in ("text", "summary")]
    columns = {}
    for name in names:
        kind = draw(st.sampled_from(["string"] * 8 + list(kinds)))
        arrow_type, values = kinds[kind]
        columns[name] = pa.array([draw(values) for _ in range(count)], type=arrow_type)
    table = pa.table(columns) if columns else pa.table({"x": pa.array([], type=pa.int64())}).slice(0, 0)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return draw(damage(buffer.getvalue()))


# --------------------------------------------------------------------------- the properties


def fuzz_test(files, extensions):
    """A property: every file `files` makes, saved under each of `extensions`, loads or is a UserError."""

    @pytest.mark.timeout(300)
    @FUZZ
    @given(data=files, extension=st.sampled_from(extensions), columns=column_flags)
    def test(workspace, data, extension, columns):
        hypothesis.event(check(workspace, data, extension, columns))  # --hypothesis-show-statistics

    return test


test_json_lines_files = fuzz_test(jsonl_files(), [".jsonl"])
test_json_files = fuzz_test(json_files(), [".json"])
test_csv_files = fuzz_test(csv_files(), [".csv"])
test_parquet_files = fuzz_test(parquet_files(), [".parquet"])
test_content_that_does_not_match_the_extension = fuzz_test(
    st.one_of(st.binary(max_size=64), jsonl_files(), csv_files(), parquet_files()),
    [".csv", ".json", ".jsonl", ".parquet", ".txt", ".JSONL", ""],
)


# --------------------------------------------------------------------------- fixed cases found by fuzzing


@pytest.mark.parametrize(
    "extension, data",
    [
        (".csv", b"text,summary\n" + b"x" * 300_000 + b",short\n"),  # a long document is not malformed CSV
        (".jsonl", json.dumps({"text": "y" * 2_000_000, "summary": "s"}).encode() + b"\n"),
    ],
    ids=["csv", "jsonl"],
)
def test_a_huge_field_loads(workspace, extension, data):
    assert check(workspace, data, extension, (None, None)) == "loaded"


@pytest.mark.parametrize("data", [b"[" * 100_000, b'{"data": ' + b"[" * 50_000, b'{"text": ' * 30_000])
def test_absurdly_deep_json_is_a_user_error(workspace, data):
    assert check(workspace, data, ".json", (None, None)) == "user error"
