"""--streaming: the training data read as a stream (seqtune.streaming), in both scripts.

Sources resume at any place; the stream's blocks, passes and positions are exact; two
processes share each batch with every example once per pass; bad rows mid-stream give one
message (or are skipped); both scripts train on a stream, and a run killed mid-stream
resumes to the weights of an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os

import pandas as pd
import pytest
from conftest import LOOP_SCRIPT, TRAINER_SCRIPT, quick_args, run_script, torchrun, write_hub_layout
from test_train_loop import KILLER, assert_ok, assert_same_weights, read_json

from seqtune import checkpoints
from seqtune.demo import synthetic_corpus, write_jsonl
from seqtune.errors import UserError
from seqtune.streaming import Corpus, CsvFile, JsonLinesFile, ParquetFile, TrainingStream, expand_train_files


def word_encoder(texts: list[str], targets: list[str]) -> dict:
    """A stand-in tokenizer for the stream's own tests: one id per word (lengths vary like real ones)."""
    return {
        "input_ids": [[len(word) for word in text.split()] for text in texts],
        "labels": [[len(word) for word in target.split()] for target in targets],
    }


def numbered_rows(count: int, start: int = 0) -> list[dict]:
    return [
        {"document": f"document {n} " + "word " * (n % 7), "summary": f"summary {n}"}
        for n in range(start, start + count)
    ]


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def write_parquet(path, rows, row_group_size):
    pd.DataFrame(rows).to_parquet(path, row_group_size=row_group_size)
    return str(path)


@pytest.fixture()
def shards(tmp_path):
    """23 rows in three shards of three formats; the CSV has a quoted line break, the JSON Lines a blank line."""
    rows = numbered_rows(23)
    rows[9]["document"] = "a document\nwith a line break, and a comma"
    jsonl = tmp_path / "shard-0.jsonl"
    write_jsonl(str(jsonl), rows[:8])
    with open(jsonl, "a", encoding="utf-8") as handle:
        handle.write("\n")
    return rows, [
        str(jsonl),
        write_csv(tmp_path / "shard-1.csv", rows[8:15]),
        write_parquet(tmp_path / "shard-2.parquet", rows[15:], row_group_size=3),
    ]


def open_source(path):
    return {".jsonl": JsonLinesFile, ".csv": CsvFile, ".parquet": ParquetFile}[os.path.splitext(path)[1]](path)


# --------------------------------------------------------------------------- sources and the stream


def test_each_file_format_resumes_at_the_place_after_any_row(shards):
    rows, paths = shards
    expected = [rows[:8], rows[8:15], rows[15:]]
    for path, wanted in zip(paths, expected):
        source = open_source(path)
        assert source.columns() == ["document", "summary"]
        read, places = [], []
        for _, record in source.rows(None):
            read.append(record)
            places.append(source.place)
        assert read == wanted, path
        for index, place in enumerate(places):
            again = open_source(path)
            again.columns()
            assert [record for _, record in again.rows(place)] == wanted[index + 1 :], (path, index)


def make_stream(paths, block_size=5, group_size=2, cap=None, order="group_by_length", seed=3):
    corpus = Corpus([open_source(p) for p in paths], "document", "summary", cap=cap)
    return TrainingStream(corpus, word_encoder, block_size=block_size, group_size=group_size, seed=seed, order=order)


def take(stream, count):
    examples = []
    for example in stream:
        examples.append(example)
        if len(examples) == count:
            return examples
    raise AssertionError("the stream ended")


def test_every_pass_uses_every_row_once_in_a_new_order(shards):
    rows, paths = shards
    stream = make_stream(paths)
    examples = take(stream, 3 * 23)
    passes = [examples[i * 23 : (i + 1) * 23] for i in range(3)]
    encoded = word_encoder([r["document"] for r in rows], [r["summary"] for r in rows])
    wanted = sorted(zip(map(tuple, encoded["input_ids"]), map(tuple, encoded["labels"])))
    for one_pass in passes:
        assert sorted((tuple(e["input_ids"]), tuple(e["labels"])) for e in one_pass) == wanted
    assert passes[0] != passes[1] != passes[2]
    assert take(make_stream(paths), 3 * 23) == examples  # the same seed, the same stream

    capped = take(make_stream(paths, cap=10), 20)
    assert capped[:10] != capped[10:] and sorted(map(str, capped[:10])) == sorted(map(str, capped[10:]))


@pytest.mark.parametrize("order", ["group_by_length", "random", "sequential"])
@pytest.mark.parametrize("cap", [None, 10])
def test_a_resumed_stream_continues_exactly_from_any_position(shards, order, cap):
    _, paths = shards
    stream = make_stream(paths, order=order, cap=cap)
    examples = take(stream, 60)
    for consumed in range(52):  # every place: inside blocks, at their ends, at the end of a pass
        position = json.loads(json.dumps(stream.position_at(consumed)))  # as a checkpoint stores it
        resumed = make_stream(paths, order=order, cap=cap)
        resumed.resume(position)
        assert take(resumed, 8) == examples[consumed : consumed + 8], (order, consumed, position)
        assert position["skip"] < 5  # at most part of one block is read again, never a used-up one


def test_length_grouping_keeps_each_global_batch_of_similar_lengths(tmp_path):
    rows = numbered_rows(40)
    path = write_jsonl(str(tmp_path / "train.jsonl"), rows)
    grouped = take(make_stream([path], block_size=40, group_size=4), 40)
    shuffled = take(make_stream([path], block_size=40, group_size=4, order="random"), 40)

    def padding(examples):
        batches = [examples[i : i + 4] for i in range(0, 40, 4)]
        return sum(max(len(e["input_ids"]) for e in b) * 4 - sum(len(e["input_ids"]) for e in b) for b in batches)

    assert padding(grouped) < padding(shuffled)


def test_two_processes_share_each_batch_and_use_every_example_once(shards):
    """Accelerate's IterableDatasetShard (what both scripts get with dispatch_batches=False) over the stream."""
    from accelerate.data_loader import IterableDatasetShard

    _, paths = shards
    whole = take(make_stream(paths, group_size=4), 46)
    parts = []
    for process in range(2):
        shard = IterableDatasetShard(
            make_stream(paths, group_size=4), batch_size=2, num_processes=2, process_index=process
        )
        parts.append(take(shard, 22))
    # Batch by batch: process 0 has the first half of each global batch of 4, process 1 the second.
    for step in range(11):
        assert parts[0][2 * step : 2 * step + 2] + parts[1][2 * step : 2 * step + 2] == whole[4 * step : 4 * step + 4]


# --------------------------------------------------------------------------- bad rows


def test_a_broken_row_mid_stream_names_its_file_and_line(tmp_path):
    rows = numbered_rows(6)
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines[4] = '{"document": "cut off here'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        take(make_stream([str(path)]), 10)
    assert f"{path}, line 5, column 14: invalid JSON (Unterminated string" in str(
        error.value
    ) and "--skip_bad_rows" in str(error.value)

    corpus = Corpus([JsonLinesFile(str(path))], "document", "summary", skip_bad_rows=True)
    stream = TrainingStream(corpus, word_encoder, block_size=4, group_size=1, seed=0)
    assert len(take(stream, 15)) == 15 and corpus.bad_rows == 3  # one per pass, three passes started

    numbers = tmp_path / "numbers.csv"
    write_csv(numbers, [{"document": "a text", "summary": "ok"}, {"document": "x", "summary": "1,2"}])
    with open(numbers, "a", encoding="utf-8") as handle:
        handle.write("three,fields,here\n")
    with pytest.raises(UserError, match=r"numbers.csv, line 4: expected 2 fields \(document, summary\), found 3"):
        take(make_stream([str(numbers)]), 10)

    typed = tmp_path / "typed.jsonl"
    write_jsonl(str(typed), [{"document": "a text", "summary": "ok"}, {"document": 17, "summary": "a number"}])
    with pytest.raises(UserError, match=r"typed.jsonl, line 2: column 'document' holds int 17, not text"):
        take(make_stream([str(typed)]), 10)

    empty = tmp_path / "empty.jsonl"
    write_jsonl(str(empty), [{"document": "", "summary": "x"}, {"document": "y", "summary": " "}])
    with pytest.raises(UserError, match="has no usable rows"):
        take(make_stream([str(empty)]), 1)


def test_train_files_are_checked_before_anything_is_read(tmp_path):
    with pytest.raises(UserError, match="matches no file"):
        expand_train_files(str(tmp_path / "train-*.jsonl"))
    listed = tmp_path / "list.json"
    listed.write_text('[{"document": "a", "summary": "b"}]', encoding="utf-8")
    with pytest.raises(UserError, match="--streaming reads JSON Lines"):
        expand_train_files(str(listed))
    (tmp_path / "train.txt").write_text("a text\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"train\.txt: unsupported file type '\.txt'\. Fix: use one of \.jsonl"):
        expand_train_files(str(tmp_path / "train.txt"))
    (tmp_path / "train-9.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(UserError, match=r"train-9\.jsonl is empty\. Fix: add examples to it, or leave it out"):
        expand_train_files(str(tmp_path / "train-*.jsonl"))
    (tmp_path / "train-9.jsonl").unlink()
    for n in (2, 0, 1):
        write_jsonl(str(tmp_path / f"train-{n}.jsonl"), numbered_rows(2))
    assert [os.path.basename(p) for p in expand_train_files(str(tmp_path / "train-*.jsonl"))] == [
        "train-0.jsonl",
        "train-1.jsonl",
        "train-2.jsonl",
    ]


@pytest.mark.parametrize(
    ("script", "flags", "message"),
    [
        (TRAINER_SCRIPT, ["--do_train"], "--streaming trains for a number of steps: pass --max_steps N"),
        (LOOP_SCRIPT, [], "--streaming trains for a number of steps: pass --max_train_steps N"),
        (TRAINER_SCRIPT, ["--do_train", "--max_steps", "4", "--save_strategy", "epoch"], "--save_strategy epoch: a"),
        (LOOP_SCRIPT, ["--max_train_steps", "4", "--checkpointing_steps", "epoch"], "--checkpointing_steps epoch"),
        (LOOP_SCRIPT, ["--max_train_steps", "4", "--train_file", "nowhere-*.jsonl"], "matches no file"),
    ],
)
def test_streaming_mistakes_stop_at_start_with_one_message(t5_model, corpus_files, tmp_path, script, flags, message):
    out = tmp_path / "out"
    result = run_script(script, quick_args(t5_model, corpus_files, out, "--streaming", *flags), timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() or not os.listdir(out)


# --------------------------------------------------------------------------- the scripts


def sharded_corpus(tmp_path, files: dict) -> str:
    """The fixture's train split as three shards (JSON Lines, CSV, Parquet); returns the glob."""
    rows = [json.loads(line) for line in open(files["train"], encoding="utf-8")]
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(str(folder / "train-0.jsonl"), rows[:20])
    write_jsonl(str(folder / "train-1.jsonl"), rows[20:40])
    write_parquet(folder / "train-2.parquet", rows[40:], row_group_size=8)
    return str(folder / "train-*")


def stream_args(model, files, out, train_glob, *extra):
    args = quick_args(model, files, out, "--streaming", "--shuffle_buffer_size", "12", "--max_eval_samples", "4")
    args[args.index("--train_file") + 1] = train_glob
    return [*args, "--val_max_target_length", "8", *extra]


def kill_at_publish(tmp_path, script, args, step) -> None:
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER, encoding="utf-8")
    result = run_script(str(killer), [script, *args], env={"KILL_AT_STEP": str(step)})
    assert result.returncode == -9, result.stderr[-3000:]


def test_loop_script_killed_mid_stream_resumes_bit_for_bit(dropout_model, corpus_files, tmp_path, isolated_hf_home):
    """64 examples in three shards, 4 per step, 24 steps: 1.5 passes. Killed while publishing step_12
    (mid-second pass is at 16), the rerun resumes from step_8's position and ends on the same weights."""
    train_glob = sharded_corpus(tmp_path, corpus_files)
    flags = ["--per_device_train_batch_size", "4", "--max_train_steps", "24", "--checkpointing_steps", "4"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = run_script(LOOP_SCRIPT, stream_args(dropout_model, corpus_files, straight, train_glob, *flags))
    assert_ok(result)
    assert "pass 0 done (64 examples so far" in result.stderr
    kill_at_publish(tmp_path, LOOP_SCRIPT, stream_args(dropout_model, corpus_files, killed, train_glob, *flags), 20)
    assert [os.path.basename(c) for c in checkpoints.list_checkpoints(str(killed))][-1] == "step_16"
    result = run_script(LOOP_SCRIPT, stream_args(dropout_model, corpus_files, killed, train_glob, *flags))
    assert_ok(result)
    assert "Resumed at step 16" in result.stderr
    assert "Resuming the training stream: pass 1, block 0, 0 examples into it (64 before it)" in result.stderr
    assert_same_weights(straight, killed)
    results = read_json(killed / "all_results.json")
    assert (
        results["train_samples"] == 96
        and results["train_loss"] == read_json(straight / "all_results.json")["train_loss"]
    )


def test_trainer_script_killed_mid_stream_of_a_hub_data_set_resumes(dropout_model, tmp_path, isolated_hf_home):
    """A data set folder laid out like the hub's, streamed (datasets' own stream state in the checkpoint)."""
    rows = [{"article": r["document"], "highlights": r["summary"]} for r in synthetic_corpus(50, seed=4)]
    folder = write_hub_layout(tmp_path, "cnn_dailymail", {"train": rows[:40], "validation": rows[40:]})
    flags = ["--dataset_name", str(folder), "--dataset_config_name", "3.0.0", "--streaming", "--do_train", "--do_eval"]
    flags += ["--max_steps", "12", "--save_steps", "3", "--per_device_train_batch_size", "4", "--max_eval_samples", "4"]
    flags += ["--shuffle_buffer_size", "7", "--predict_with_generate", "--generation_max_length", "8"]

    def args(out):
        base = quick_args(dropout_model, {"train": "", "validation": "", "test": ""}, out, *flags)
        for flag in ("--train_file", "--validation_file", "--test_file"):
            index = base.index(flag)
            del base[index : index + 2]
        return base

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert_ok(run_script(TRAINER_SCRIPT, args(straight)))
    kill_at_publish(tmp_path, TRAINER_SCRIPT, args(killed), 9)
    result = run_script(TRAINER_SCRIPT, args(killed))
    assert_ok(result)
    assert "Resuming the training stream: pass 0, block" in result.stderr
    assert read_json(killed / "checkpoint-12" / "stream_position.json")["pass_number"] == 1  # 48 examples of 40
    assert_same_weights(straight, killed)
    assert read_json(killed / "all_results.json")["train_samples"] == 48


def test_torchrun_two_processes_stream_and_resume(t5_model, corpus_files, tmp_path, isolated_hf_home):
    """2 processes x 2 per step with both scripts; each script's run killed mid-stream ends on the weights of its
    uninterrupted twin; the Trainer's 2-process run trains on what one process with batch 4 does."""
    train_glob = sharded_corpus(tmp_path, corpus_files)
    loop_flags = ["--per_device_train_batch_size", "2", "--max_train_steps", "10", "--checkpointing_steps", "4"]
    straight, killed = tmp_path / "loop-straight", tmp_path / "loop-killed"
    assert_ok(
        run_script(
            LOOP_SCRIPT, stream_args(t5_model, corpus_files, straight, train_glob, *loop_flags), launcher=torchrun(2)
        )
    )
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER, encoding="utf-8")
    killed_args = stream_args(t5_model, corpus_files, killed, train_glob, *loop_flags)
    result = run_script(str(killer), [LOOP_SCRIPT, *killed_args], launcher=torchrun(2), env={"KILL_AT_STEP": "8"})
    assert result.returncode != 0
    result = run_script(LOOP_SCRIPT, killed_args, launcher=torchrun(2))
    assert_ok(result)
    assert "Resumed at step 4" in result.stderr
    assert_same_weights(straight, killed)

    trainer_flags = ["--do_train", "--max_steps", "6", "--save_steps", "3"]
    two, one = tmp_path / "trainer-two", tmp_path / "trainer-one"
    assert_ok(
        run_script(
            TRAINER_SCRIPT,
            stream_args(t5_model, corpus_files, two, train_glob, *trainer_flags, "--per_device_train_batch_size", "2"),
            launcher=torchrun(2),
        )
    )
    assert_ok(
        run_script(
            TRAINER_SCRIPT,
            stream_args(t5_model, corpus_files, one, train_glob, *trainer_flags, "--per_device_train_batch_size", "4"),
        )
    )
    assert read_json(two / "checkpoint-3" / "stream_position.json") == read_json(
        one / "checkpoint-3" / "stream_position.json"
    )
    # The Trainer's 2-process run killed while publishing checkpoint-6: the rerun resumes mid-stream from
    # checkpoint-3 on 2 processes and ends on the uninterrupted run's weights.
    two_killed = tmp_path / "trainer-two-killed"
    killed_args = stream_args(
        t5_model, corpus_files, two_killed, train_glob, *trainer_flags, "--per_device_train_batch_size", "2"
    )
    result = run_script(str(killer), [TRAINER_SCRIPT, *killed_args], launcher=torchrun(2), env={"KILL_AT_STEP": "6"})
    assert result.returncode != 0
    assert [os.path.basename(c) for c in checkpoints.list_checkpoints(str(two_killed))] == ["checkpoint-3"]
    result = run_script(TRAINER_SCRIPT, killed_args, launcher=torchrun(2))
    assert_ok(result)
    assert "Resuming the training stream: pass 0, block" in result.stderr
    assert_same_weights(two, two_killed)
    # The same examples in every step: the same weights but for the order of floating-point sums.
    from test_train_loop import weights

    two_weights, one_weights = weights(two), weights(one)
    assert max((two_weights[n] - one_weights[n]).abs().max().item() for n in one_weights) < 1e-4


def test_nested_translation_data_streams_with_its_language_columns():
    from seqtune.arguments import ModelArguments, TranslationDataArguments
    from seqtune.data import load_raw_data

    sample = os.path.join(os.path.dirname(__file__), "fixtures", "tests_samples", "wmt16", "sample.json")
    data_args = TranslationDataArguments(train_file=sample, source_lang="en_XX", target_lang="ro_RO", streaming=True)
    raw = load_raw_data(data_args, ModelArguments(model_name_or_path="unused"), ["train"])
    corpus = raw.train_corpus
    assert (corpus.text_column, corpus.target_column) == ("translation.en", "translation.ro") and not raw.splits
    first = next(corpus.rows_of_pass(corpus_start()))[1]
    assert first == {
        "text": "Membership of Parliament: see Minutes",
        "target": "Componenţa Parlamentului: a se vedea procesul-verbal",
    }


def corpus_start():
    from seqtune.streaming import StreamPosition

    return StreamPosition()


def test_skipped_bad_rows_are_counted_in_the_results(t5_model, corpus_files, tmp_path, isolated_hf_home):
    rows = [json.loads(line) for line in open(corpus_files["train"], encoding="utf-8")][:24]
    train = tmp_path / "train.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines[5], lines[17] = '{"document": "broken', '{"document": 3, "summary": "a number"}'
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = stream_args(t5_model, corpus_files, out, str(train), "--max_train_steps", "3", "--skip_bad_rows")
    result = run_script(LOOP_SCRIPT, [*args, "--per_device_train_batch_size", "4"])
    assert_ok(result)
    assert f"Skipped a bad row (--skip_bad_rows): {train}, line 6, column 14: invalid JSON" in result.stderr, (
        result.stderr
    )
    results = read_json(out / "all_results.json")
    assert results["train_bad_rows_skipped"] == 2 and results["train_empty_rows_dropped"] == 0

    stopped = tmp_path / "stopped"
    result = run_script(LOOP_SCRIPT, stream_args(t5_model, corpus_files, stopped, str(train), "--max_train_steps", "3"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{train}, line 6, column 14: invalid JSON" in result.stderr and "--skip_bad_rows" in result.stderr
