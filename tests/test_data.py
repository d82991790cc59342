"""Data loading: formats, columns, validation errors with file/line/column, caps, empty rows."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from conftest import LOOP_SCRIPT, TRAINER_SCRIPT, run_script

from seqtune.arguments import DataArguments, LoopArguments, ModelArguments, TrainerArguments
from seqtune.data import (
    LOOP_SPLIT_NEEDS,
    TRAINER_SPLIT_NEEDS,
    load_raw_data,
    resolve_columns,
    split_needs,
    tokenize_splits,
)
from seqtune.errors import UserError

ROWS = [{"text": f"document number {i} says something .", "summary": f"summary {i} ."} for i in range(10)]


def write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def load(splits=("train",), **data_kwargs):
    return load_raw_data(DataArguments(**data_kwargs), ModelArguments(), list(splits))


@pytest.fixture()
def files(tmp_path):
    frame = pd.DataFrame(ROWS)
    paths = {
        "csv": str(tmp_path / "d.csv"),
        "jsonl": str(tmp_path / "d.jsonl"),
        "json": str(tmp_path / "d.json"),
        "parquet": str(tmp_path / "d.parquet"),
    }
    frame.to_csv(paths["csv"], index=False)
    frame.to_json(paths["jsonl"], orient="records", lines=True)
    write(tmp_path / "d.json", json.dumps(ROWS))
    frame.to_parquet(paths["parquet"])
    return paths


@pytest.mark.parametrize("kind", ["csv", "jsonl", "json", "parquet"])
def test_every_file_format_loads_the_same_rows(files, kind, isolated_hf_home):
    raw = load(train_file=files[kind])
    assert (raw.text_column, raw.summary_column) == ("text", "summary")
    assert raw.splits["train"]["text"] == [r["text"] for r in ROWS]
    assert raw.splits["train"]["summary"] == [r["summary"] for r in ROWS]


def test_json_file_with_a_data_field(tmp_path, isolated_hf_home):
    path = write(tmp_path / "d.json", json.dumps({"data": ROWS}))
    assert len(load(train_file=path).splits["train"]) == len(ROWS)


def test_max_samples_cut_each_split(files, isolated_hf_home):
    raw = load(
        ("train", "validation", "test"),
        train_file=files["csv"],
        validation_file=files["jsonl"],
        test_file=files["parquet"],
        max_train_samples=3,
        max_eval_samples=4,
        max_predict_samples=5,
    )
    assert [len(raw.splits[s]) for s in ("train", "validation", "test")] == [3, 4, 5]
    assert raw.splits["test"]["text"] == [r["text"] for r in ROWS[:5]]  # the first N, in order


def test_empty_rows_are_dropped_and_counted(tmp_path, caplog, isolated_hf_home):
    rows = ROWS[:4] + [{"text": "", "summary": "x"}, {"text": "y", "summary": "   "}, {"text": None, "summary": "z"}]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows))
    with caplog.at_level(logging.WARNING, logger="seqtune"):
        raw = load(train_file=path)
    assert len(raw.splits["train"]) == 4
    assert "dropped 3 of 7 rows" in caplog.text


def test_columns_named_by_flags_and_first_two_by_default(tmp_path, isolated_hf_home):
    path = write(tmp_path / "d.csv", "id,body,abstract\n1,some text,short\n2,more text,shorter\n")
    raw = load(train_file=path, text_column="body", summary_column="abstract")
    assert (raw.text_column, raw.summary_column) == ("body", "abstract")
    raw = load(train_file=path)
    assert (raw.text_column, raw.summary_column) == ("id", "body")


def test_known_data_set_columns_by_folder_name():
    args = DataArguments(dataset_name="/data/sets/cnn_dailymail")
    assert resolve_columns(["id", "article", "highlights"], args, "x") == ("article", "highlights")
    args = DataArguments(dataset_name="EdinburghNLP/xsum")
    assert resolve_columns(["document", "summary", "id"], args, "x") == ("document", "summary")
    args = DataArguments(dataset_name="samsum")
    assert resolve_columns(["id", "dialogue", "summary"], args, "x") == ("dialogue", "summary")


# ---------------------------------------------------------------------------- errors


def error_of(**kwargs) -> str:
    splits = kwargs.pop("splits", ("train",))
    with pytest.raises(UserError) as info:
        load(splits, **kwargs)
    return str(info.value)


def test_missing_file(tmp_path):
    message = error_of(train_file=str(tmp_path / "nope.csv"))
    assert "nope.csv" in message and "no such file" in message


def test_unsupported_extension(tmp_path):
    message = error_of(train_file=write(tmp_path / "d.txt", "a,b\n"))
    assert "d.txt" in message and ".csv" in message and ".jsonl" in message and ".parquet" in message


def test_malformed_csv_row_names_the_line(tmp_path):
    path = write(tmp_path / "d.csv", "text,summary\nfine,ok\nalso fine,ok\ntoo,many,fields\n")
    message = error_of(train_file=path)
    assert "d.csv, line 4" in message and "expected 2 fields" in message and "quote" in message


def test_unclosed_csv_quote_is_reported(tmp_path):
    path = write(tmp_path / "d.csv", 'text,summary\nfine,ok\n"never closed,ok\n')
    message = error_of(train_file=path)
    assert "d.csv, line 3, column 1" in message and "never closed" in message and "close the quote" in message


def test_bad_json_line_names_line_and_column(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "summary": "b"}\n{"text": "a" "summary": "b"}\n')
    message = error_of(train_file=path)
    assert "d.jsonl, line 2, column 14" in message and "JSON" in message


def test_json_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "summary": "b"}\n[1, 2]\n')
    assert "line 2" in error_of(train_file=path)


def test_conflicting_types_in_a_json_column(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "summary": "b"}\n{"text": 5, "summary": "b"}\n')
    message = error_of(train_file=path)
    assert "line 2" in message and "'text'" in message and "line 1" in message


def test_not_utf8(tmp_path):
    path = write(tmp_path / "d.csv", b"text,summary\nok,fine\n" + b"caf\xe9,x\n", mode="wb")
    message = error_of(train_file=path)
    assert "line 3" in message and "UTF-8" in message


def test_named_column_that_does_not_exist_lists_the_columns(files):
    message = error_of(train_file=files["csv"], text_column="article")
    assert "'article'" in message and "text, summary" in message and "--text_column" in message


def test_empty_file_and_header_only(tmp_path):
    assert "empty" in error_of(train_file=write(tmp_path / "e.jsonl", ""))
    assert "no rows" in error_of(train_file=write(tmp_path / "h.csv", "text,summary\n"))


def test_split_with_only_empty_rows(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "", "summary": "b"}\n{"text": "a", "summary": ""}\n')
    assert "no usable rows" in error_of(train_file=path)


def test_do_train_without_a_train_split(files):
    message = error_of(splits=("train", "validation"), validation_file=files["csv"])
    assert "--do_train" in message and "--train_file" in message


def test_no_data_at_all():
    assert "--dataset_name" in error_of()


def test_non_text_column(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": 1, "summary": "b"}\n{"text": 2, "summary": "c"}\n')
    assert "not text" in error_of(train_file=path)


def test_tokenization_adds_prefix_and_truncates(files, isolated_hf_home, t5_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(t5_model)
    raw = load(train_file=files["jsonl"])
    args = DataArguments(
        train_file=files["jsonl"], source_prefix="summarize: ", max_source_length=5, max_target_length=3
    )
    tokenized = tokenize_splits(raw, tokenizer, args)["train"]
    first = tokenized[0]
    assert len(first["input_ids"]) == 5 and len(first["labels"]) == 3
    assert tokenizer.convert_ids_to_tokens(first["input_ids"][:2]) == ["summarize", ":"]


# --------------------------------------------------------------------------- length-grouped order


def test_length_grouped_order_pads_little_and_does_not_walk_from_long_to_short():
    import random

    from seqtune.batching import LengthGroupedSampler

    rng = random.Random(0)
    lengths = [rng.randint(100, 1500) for _ in range(4003)]  # 500 batches of 8, and 3 left over
    batch = 8
    sampler = LengthGroupedSampler(lengths, batch, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))  # every example once
    assert order == list(LengthGroupedSampler(lengths, batch, seed=3))  # same seed and epoch: same order
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new epoch: a new order

    def batches_of(indices):
        return [indices[start : start + batch] for start in range(0, len(indices), batch)]

    def padded_tokens(indices):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches_of(indices))

    batches = batches_of(order)
    assert max(lengths) in [lengths[i] for i in batches[0]]  # the longest example first: out-of-memory shows at once
    shuffled = rng.sample(range(len(lengths)), len(lengths))
    assert padded_tokens(order) < 0.8 * padded_tokens(shuffled)  # grouped batches: far less padding than random ones

    # Batches come in a shuffled order, not sorted within mega-batches of 50 (a long-to-short walk every
    # 50 steps that ends training on the shortest documents): the longest of each batch rises about as
    # often as it falls from one step to the next.
    longest = [max(lengths[i] for i in b) for b in batches[:-1]]
    rises = sum(after > before for before, after in zip(longest, longest[1:]))
    assert 0.35 < rises / (len(longest) - 1) < 0.65


# --------------------------------------------------------------------------- where a CSV quote opens


def test_unclosed_csv_quote_names_the_line_where_it_opens_not_the_end_of_the_file(tmp_path):
    lines = ["text,summary", "first document,first summary", '"third line opens a quote,summary']
    lines += [f"document {n},summary {n}" for n in range(4, 11)]  # 10 lines: the file ends inside the quote
    path = write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    message = error_of(train_file=path)
    assert message.startswith(f"{path}, line 3, column 1: this double quote opens a field that is never closed")
    assert "line 10" not in message and 'write quotes inside a field as ""' in message


def test_unclosed_quote_after_escaped_quotes_and_a_quoted_line_break(tmp_path):
    text = 'text,summary\n"a ""quoted"" word",ok\n"two\nlines",ok\nfine,"never closed\nmore\n'
    message = error_of(train_file=write(tmp_path / "d.csv", text))
    assert "d.csv, line 5, column 6: this double quote opens a field that is never closed" in message


def test_csv_error_inside_a_row_that_spans_lines_names_where_the_row_starts(tmp_path):
    path = write(tmp_path / "d.csv", 'text,summary\nok,"spans\ntwo lines" then text\nfine,ok\n')
    message = error_of(train_file=path)
    assert "d.csv, line 3: malformed CSV" in message and "this row starts on line 2" in message


# --------------------------------------------------------------------------- which flag a missing split blames


def test_missing_validation_split_blames_what_the_script_does(files):
    kwargs = dict(train_file=files["csv"])
    loop = split_needs(LoopArguments(output_dir="unused"))
    trainer = split_needs(TrainerArguments(output_dir="unused", do_eval=True, report_to="none"))
    assert loop is LOOP_SPLIT_NEEDS and trainer is TRAINER_SPLIT_NEEDS

    with pytest.raises(UserError) as info:
        load_raw_data(DataArguments(**kwargs), ModelArguments(), ["train", "validation"], needs=loop)
    assert str(info.value) == (
        "the Accelerate script (run_summarization_no_trainer.py) evaluates after every epoch and needs a "
        "validation split. Fix: pass --validation_file."
    )
    with pytest.raises(UserError) as info:
        load_raw_data(DataArguments(**kwargs), ModelArguments(), ["train", "validation"], needs=trainer)
    assert str(info.value).startswith("--do_eval (also set by --eval_strategy steps or epoch) needs a validation")
    assert str(info.value).endswith("Fix: pass --validation_file.")


def test_missing_split_of_a_named_data_set_says_which_splits_it_has(tmp_path, isolated_hf_home):
    from conftest import cnn_rows, write_hub_layout

    folder = write_hub_layout(tmp_path, "cnn_dailymail", {"train": cnn_rows(4, seed=0)})
    with pytest.raises(UserError) as info:
        load_raw_data(
            DataArguments(dataset_name=str(folder), dataset_config_name="3.0.0"),
            ModelArguments(),
            ["train", "validation"],
            needs=LOOP_SPLIT_NEEDS,
        )
    message = str(info.value)
    assert "evaluates after every epoch" in message and "has only the splits train." in message
    assert "Fix: choose a data set (or --dataset_config_name) with a validation split" in message


def test_no_trainer_script_without_validation_data_does_not_blame_do_eval(t5_model, corpus_files, tmp_path):
    """The loop always evaluates: its message must not name --do_eval, a flag it does not have."""
    result = run_script(
        LOOP_SCRIPT,
        ["--model_name_or_path", t5_model, "--train_file", corpus_files["train"], "--output_dir", tmp_path / "o"],
    )
    assert result.returncode == 2, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("seqtune: error: ")]
    assert len(error) == 1 and "Traceback" not in result.stderr
    assert "run_summarization_no_trainer.py" in error[0] and "after every epoch" in error[0]
    assert "--validation_file" in error[0] and "--do_eval needs" not in error[0]
    assert not (tmp_path / "o").exists()


def test_trainer_script_do_eval_without_validation_data_names_do_eval(t5_model, corpus_files, tmp_path):
    args = ["--model_name_or_path", t5_model, "--train_file", corpus_files["train"], "--output_dir", tmp_path / "o"]
    result = run_script(TRAINER_SCRIPT, [*args, "--do_train", "--do_eval"])
    assert result.returncode == 2, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("seqtune: error: ")]
    assert len(error) == 1 and "--do_eval" in error[0] and "Fix: pass --validation_file." in error[0]
