"""--streaming for the validation and test splits: read, tokenized and generated window by window.

The metrics of a streamed evaluation equal the in-memory evaluation's on the same data and model
(both scripts, files and a hub-style data set folder, one and two processes); predictions come
in input order; --max_eval_samples / --max_predict_samples keep the first rows; bad rows stop
with their file and line (or are skipped); the Trainer evaluates a stream at its eval steps.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import LOOP_SCRIPT, TRAINER_SCRIPT, quick_args, run_script, torchrun, write_hub_layout
from test_train_loop import assert_ok, read_json

from seqtune.demo import synthetic_corpus, write_jsonl
from seqtune.errors import UserError
from seqtune.streaming import Corpus, EvaluationStream, JsonLinesFile

# Speeds and runtimes differ from run to run; the epoch of the Accelerate script counts a stream as one epoch.
UNSTABLE = ("runtime", "per_second", "epoch", "preparation_time")


def stable(results: dict, prefixes=("eval_", "predict_")) -> dict:
    return {
        key: value
        for key, value in results.items()
        if key.startswith(prefixes) and not any(word in key for word in UNSTABLE)
    }


def read_lines(path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


def eval_args(model, files, out, *extra):
    """The Trainer script, evaluating and predicting with generation only (no training)."""
    args = quick_args(model, files, out, "--do_eval", "--do_predict", "--predict_with_generate", *extra)
    return [*args, "--generation_max_length", "12", "--per_device_eval_batch_size", "4"]


def loop_eval_args(model, files, out, *extra):
    """The Accelerate script: two steps at learning rate 0 (the weights stay the base model's), then evaluation."""
    args = quick_args(model, files, out, "--max_train_steps", "2", "--do_predict", *extra)
    args[args.index("--learning_rate") + 1] = "0"
    return [*args, "--val_max_target_length", "12", "--per_device_eval_batch_size", "4"]


STREAM = ("--streaming", "--shuffle_buffer_size", "5")  # windows of 5: the 16 and 12 examples in 4 and 3 windows


@pytest.fixture(scope="module")
def in_memory(trap_model, corpus_files, tmp_path_factory) -> dict:
    """The references: each script's in-memory evaluation and prediction on the trap model (its summaries
    differ from input to input, so order shows)."""
    root = tmp_path_factory.mktemp("in-memory")
    trainer, loop = root / "trainer", root / "loop"
    assert_ok(run_script(TRAINER_SCRIPT, eval_args(trap_model, corpus_files, trainer)))
    assert_ok(run_script(LOOP_SCRIPT, loop_eval_args(trap_model, corpus_files, loop)))
    predictions = read_lines(trainer / "generated_predictions.txt")
    assert len(predictions) == 12 and len(set(predictions)) > 6
    assert read_json(trainer / "all_results.json")["eval_rouge1"] > 0  # scores that can differ
    return {"trainer": trainer, "loop": loop}


def assert_same_metrics(results: dict, expected: dict, loss_tolerance: float = 1e-6) -> None:
    """Equal scores, lengths and counts; losses equal but for the order of a float sum (and rounding)."""
    assert stable(results).keys() == stable(expected).keys()
    for key, value in stable(expected).items():
        assert results[key] == pytest.approx(value, abs=loss_tolerance if key.endswith("_loss") else 0), key


def assert_same_evaluation(streamed, reference) -> None:
    results, expected = read_json(streamed / "all_results.json"), read_json(reference / "all_results.json")
    evaluated = {key for key in expected if key.startswith(("eval_", "predict_"))}
    assert {key for key in results if key.startswith(("eval_", "predict_"))} == evaluated  # the same keys
    assert_same_metrics(results, expected)
    assert read_json(streamed / "eval_results.json").keys() == read_json(reference / "eval_results.json").keys()
    assert read_lines(streamed / "generated_predictions.txt") == read_lines(reference / "generated_predictions.txt")


def test_trainer_streamed_evaluation_equals_in_memory(trap_model, corpus_files, in_memory, tmp_path):
    out = tmp_path / "streamed"
    result = run_script(TRAINER_SCRIPT, eval_args(trap_model, corpus_files, out, *STREAM))
    assert_ok(result)
    assert_same_evaluation(out, in_memory["trainer"])
    assert read_json(out / "all_results.json")["eval_samples"] == 16
    assert "Tokenizing the validation split" not in result.stderr  # nothing loaded through datasets' cache
    # The report's examples are the test stream's first rows.
    first = json.loads(read_lines(corpus_files["test"])[0])
    assert json.loads(read_lines(out / "report_examples.jsonl")[0])["source"] == first["document"]


def test_trainer_streamed_loss_only_evaluation_equals_in_memory(t5_model, corpus_files, tmp_path):
    """Without --predict_with_generate the Trainer reports the loss only (no logits kept): the same keys and
    values (not rounded) as in memory, and no predictions file."""
    runs = {}
    for name, extra in (("memory", ()), ("streamed", STREAM)):
        out = tmp_path / name
        args = [arg for arg in eval_args(t5_model, corpus_files, out, *extra) if arg != "--predict_with_generate"]
        assert_ok(run_script(TRAINER_SCRIPT, args))
        runs[name] = read_json(out / "all_results.json")
        assert not (out / "generated_predictions.txt").exists()
    assert runs["streamed"].keys() == runs["memory"].keys()
    assert_same_metrics(runs["streamed"], runs["memory"])
    assert runs["streamed"]["predict_samples"] == 12 and "eval_rouge1" not in runs["streamed"]


def test_loop_streamed_evaluation_equals_in_memory(trap_model, corpus_files, in_memory, tmp_path):
    out = tmp_path / "streamed"
    assert_ok(run_script(LOOP_SCRIPT, loop_eval_args(trap_model, corpus_files, out, *STREAM)))
    assert_same_evaluation(out, in_memory["loop"])


def test_two_processes_evaluate_a_stream_like_one(trap_model, corpus_files, in_memory, tmp_path):
    """torchrun, 2 processes, both scripts: each example evaluated once, the metrics and the predictions
    (in input order) of one process in memory."""
    trainer, loop = tmp_path / "trainer", tmp_path / "loop"
    assert_ok(run_script(TRAINER_SCRIPT, eval_args(trap_model, corpus_files, trainer, *STREAM), launcher=torchrun(2)))
    assert_same_evaluation(trainer, in_memory["trainer"])
    assert_ok(run_script(LOOP_SCRIPT, loop_eval_args(trap_model, corpus_files, loop, *STREAM), launcher=torchrun(2)))
    results, expected = read_json(loop / "all_results.json"), read_json(in_memory["loop"] / "all_results.json")
    assert results["eval_samples"] == 16 and results["predict_samples"] == 12
    assert_same_metrics(results, expected, loss_tolerance=2e-4)  # losses rounded to 4 places: the last may differ
    assert read_lines(loop / "generated_predictions.txt") == read_lines(in_memory["loop"] / "generated_predictions.txt")


def test_hub_data_set_splits_stream_with_sample_caps(trap_model, tmp_path):
    """A data set folder laid out like the hub's: validation and test streamed by datasets, capped by
    --max_eval_samples / --max_predict_samples (the first rows), as in memory."""
    rows = [{"article": r["document"], "highlights": r["summary"]} for r in synthetic_corpus(30, seed=5)]
    folder = write_hub_layout(tmp_path, "cnn_dailymail", {"validation": rows[:18], "test": rows[18:]})

    def args(out, *extra):
        base = eval_args(trap_model, {"train": "", "validation": "", "test": ""}, out, *extra)
        for flag in ("--train_file", "--validation_file", "--test_file"):
            index = base.index(flag)
            del base[index : index + 2]
        return [*base, "--dataset_name", str(folder), "--dataset_config_name", "3.0.0"]

    caps = ("--max_eval_samples", "7", "--max_predict_samples", "9")
    memory, streamed = tmp_path / "memory", tmp_path / "streamed"
    assert_ok(run_script(TRAINER_SCRIPT, args(memory, *caps)))
    assert_ok(run_script(TRAINER_SCRIPT, args(streamed, *caps, *STREAM)))
    assert_same_evaluation(streamed, memory)
    results = read_json(streamed / "all_results.json")
    assert results["eval_samples"] == 7 and results["predict_samples"] == 9


def test_trainer_evaluates_a_stream_at_its_eval_steps(t5_model, corpus_files, tmp_path):
    """Training on a stream with --eval_strategy steps: the streamed validation split is evaluated at each."""
    out = tmp_path / "out"
    flags = ["--do_train", "--do_eval", "--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "2"]
    flags += ["--predict_with_generate", "--generation_max_length", "8", "--max_eval_samples", "6", *STREAM]
    assert_ok(run_script(TRAINER_SCRIPT, quick_args(t5_model, corpus_files, out, *flags)))
    history = [json.loads(line) for line in read_lines(out / "log_history.jsonl")]
    evaluations = [entry for entry in history if "eval_rouge1" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4, 4]  # at each eval step, then the final --do_eval
    assert all(entry["eval_samples"] == 6 for entry in evaluations)
    assert read_json(out / "eval_results.json")["eval_loss"] == evaluations[-1]["eval_loss"]


def test_loop_evaluates_a_stream_every_eval_steps_without_changing_training(dropout_model, corpus_files, tmp_path):
    """The Accelerate script with --eval_steps: the streamed validation split is evaluated at steps 2 and 4 (the
    end: once), and training ends on the weights of a run that never evaluated in between (dropout on: the
    model goes back to training mode, and evaluation draws nothing from the training's random numbers)."""
    from test_train_loop import assert_same_weights

    flags = ["--max_train_steps", "4", "--per_device_train_batch_size", "4", "--max_eval_samples", "6"]
    flags += ["--val_max_target_length", "8", *STREAM]
    evaluating, plain = tmp_path / "evaluating", tmp_path / "plain"
    assert_ok(run_script(LOOP_SCRIPT, quick_args(dropout_model, corpus_files, evaluating, *flags, "--eval_steps", "2")))
    assert_ok(run_script(LOOP_SCRIPT, quick_args(dropout_model, corpus_files, plain, *flags)))
    history = [json.loads(line) for line in read_lines(evaluating / "log_history.jsonl")]
    evaluations = [entry for entry in history if "eval_rouge1" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4]
    assert all(entry["eval_samples"] == 6 for entry in evaluations)
    assert [
        entry["step"] for entry in map(json.loads, read_lines(plain / "log_history.jsonl")) if "eval_loss" in entry
    ] == [4]
    assert_same_weights(evaluating, plain)
    assert read_json(evaluating / "eval_results.json")["eval_loss"] == evaluations[-1]["eval_loss"]


# --------------------------------------------------------------------------- bad rows


def test_bad_rows_in_evaluation_streams_name_their_file_and_line(t5_model, corpus_files, tmp_path):
    rows = [json.loads(line) for line in read_lines(corpus_files["validation"])]
    validation = tmp_path / "validation.jsonl"
    lines = [json.dumps(row) for row in rows]
    lines[4] = '{"document": "cut off'
    validation.write_text("\n".join(lines) + "\n", encoding="utf-8")
    files = dict(corpus_files, validation=str(validation))
    stopped = tmp_path / "stopped"
    result = run_script(TRAINER_SCRIPT, eval_args(t5_model, files, stopped, *STREAM))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"{validation}, line 5, column 14: invalid JSON (Unterminated string" in result.stderr
    assert "--skip_bad_rows" in result.stderr

    skipped = tmp_path / "skipped"
    result = run_script(TRAINER_SCRIPT, eval_args(t5_model, files, skipped, *STREAM, "--skip_bad_rows"))
    assert_ok(result)
    assert f"Skipped a bad row (--skip_bad_rows): {validation}, line 5" in result.stderr
    assert read_json(skipped / "all_results.json")["eval_samples"] == 15

    test = tmp_path / "test.csv"
    test.write_text('document,summary\n"a text","a summary"\none,two,three\n', encoding="utf-8")
    files = dict(corpus_files, test=str(test))
    result = run_script(TRAINER_SCRIPT, eval_args(t5_model, files, tmp_path / "csv", *STREAM))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"{test}, line 3: expected 2 fields (document, summary), found 3" in result.stderr


def test_an_evaluation_stream_is_read_again_at_each_evaluation_and_checked_up_front(tmp_path):
    rows = [{"document": f"text {n} " + "word " * (n % 5), "summary": f"summary {n}"} for n in range(11)]
    rows[3]["summary"] = " "  # dropped, as in memory
    path = write_jsonl(str(tmp_path / "test.jsonl"), rows)

    def encode(texts, targets):
        return {"input_ids": [t.split() for t in texts], "labels": [t.split() for t in targets]}

    corpus = Corpus([JsonLinesFile(path)], "document", "summary", cap=8, split="test")
    stream = EvaluationStream(corpus, encode, window=3)
    windows = list(stream.windows())
    assert [len(w["input_ids"]) for w in windows] == [3, 3, 2]  # the first 8 usable rows, in windows of 3
    texts = [" ".join(ids) for w in windows for ids in w["input_ids"]]
    assert texts == [" ".join(r["document"].split()) for r in rows[:3] + rows[4:9]]
    assert list(stream.windows()) == windows and stream.examples == 8  # read again, the same

    from seqtune.arguments import DataArguments, ModelArguments
    from seqtune.data import load_raw_data

    empty = write_jsonl(str(tmp_path / "empty.jsonl"), [{"document": "x", "summary": ""}])
    data_args = DataArguments(validation_file=empty, test_file=path, streaming=True)
    with pytest.raises(
        UserError, match=r"empty\.jsonl has no usable rows: every row has an empty 'document' or 'summary'"
    ):
        load_raw_data(data_args, ModelArguments(model_name_or_path="unused"), ["validation", "test"])
    missing = DataArguments(test_file=path, streaming=True)
    with pytest.raises(UserError, match=r"evaluation needs a validation split .*Fix: pass --validation_file\."):
        load_raw_data(missing, ModelArguments(model_name_or_path="unused"), ["validation", "test"])
    raw = load_raw_data(DataArguments(test_file=path, streaming=True), ModelArguments("unused"), ["test"])
    assert not raw.splits and raw.eval_corpora["test"].first_rows(2)[1]["text"] == rows[1]["document"]
    assert os.path.basename(path) in raw.source
