"""End to end: examples/pytorch/summarization/run_summarization.py on tiny models and local data."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from conftest import TRAINER_SCRIPT, cnn_rows, put_in_hf_cache, quick_args, run_script, write_hub_layout

from seqtune.demo import make_base_model
from seqtune.recipes.trainer import main

ROUGE_KEYS = ["eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_gen_len"]


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def run_main(argv):
    """Call the recipe in-process; a user error comes back as its exit code."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_train_eval_predict_writes_every_output(t5_model, corpus_files, tmp_path, isolated_hf_home):
    out = tmp_path / "out"
    result = run_script(
        TRAINER_SCRIPT,
        quick_args(
            t5_model,
            corpus_files,
            out,
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--predict_with_generate",
            "--max_steps",
            "6",
            "--save_steps",
            "3",
            "--logging_steps",
            "2",
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = set(os.listdir(out))
    for expected in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "checkpoint-3",
        "checkpoint-6",
        "train_results.json",
        "eval_results.json",
        "predict_results.json",
        "all_results.json",
        "generated_predictions.txt",
        "trainer_state.json",
        "README.md",
    ):
        assert expected in names, f"{expected} missing from {sorted(names)}"
    results = read_json(out / "all_results.json")
    for key in ROUGE_KEYS + ["eval_samples", "eval_runtime", "train_samples", "train_runtime", "predict_samples"]:
        assert key in results, key
    assert results["eval_samples"] == 16 and results["predict_samples"] == 12
    predictions = (out / "generated_predictions.txt").read_text(encoding="utf-8").split("\n")
    assert len(predictions) == 13 and predictions[-1] == ""  # one line per test example
    assert read_json(out / "trainer_state.json")["global_step"] == 6
    card = (out / "README.md").read_text()
    assert t5_model in card and "train.jsonl" in card and "eval_rouge1" in card
    # The model's own use_cache, not the Trainer's training value (False): loaders that read it from config.json
    # (transformers 4, the TensorFlow script's XLA generate) need the cache.
    for folder in (out, out / "checkpoint-3"):
        assert read_json(folder / "config.json")["use_cache"] is True

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    AutoModelForSeq2SeqLM.from_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(out))


def test_bart_trains_and_learns(bart_model, corpus_files, tmp_path, isolated_hf_home):
    out = tmp_path / "bart"
    results = run_main(
        quick_args(
            bart_model,
            corpus_files,
            out,
            "--do_train",
            "--do_eval",
            "--num_train_epochs",
            "2",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
        )
    )
    assert isinstance(results, dict)
    history = read_json(out / "trainer_state.json")["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0]
    assert "eval_loss" in results and "eval_rouge1" not in results  # no generation without --predict_with_generate


def test_rerun_resumes_from_the_newest_complete_checkpoint(t5_model, corpus_files, tmp_path, isolated_hf_home, caplog):
    out = tmp_path / "resume"
    args = quick_args(t5_model, corpus_files, out, "--do_train", "--save_steps", "2", "--logging_steps", "1")
    assert isinstance(run_main(args + ["--max_steps", "4"]), dict)
    (out / "checkpoint-6").mkdir()  # what a kill during another tool's write leaves: never chosen
    caplog.clear()
    with caplog.at_level("INFO"):
        assert isinstance(run_main(args + ["--max_steps", "6"]), dict)
    assert "Resuming from" in caplog.text and "checkpoint-4" in caplog.text
    assert "Skipping" in caplog.text and "checkpoint-6" in caplog.text
    state = read_json(out / "trainer_state.json")
    assert state["global_step"] == 6
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == [1, 2, 3, 4, 5, 6]  # history carried over, steps 5-6 trained after the resume


def test_resume_from_a_named_checkpoint(t5_model, corpus_files, tmp_path, isolated_hf_home):
    out = tmp_path / "a"
    args = quick_args(
        t5_model, corpus_files, out, "--do_train", "--save_steps", "2", "--max_steps", "4", "--logging_steps", "1"
    )
    assert isinstance(run_main(args), dict)
    other = tmp_path / "b"
    argv = quick_args(
        t5_model,
        corpus_files,
        other,
        "--do_train",
        "--max_steps",
        "5",
        "--logging_steps",
        "1",
        "--resume_from_checkpoint",
        str(out / "checkpoint-2"),
    )
    assert isinstance(run_main(argv), dict)
    state = read_json(other / "trainer_state.json")
    assert state["global_step"] == 5
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5]  # 1-2 carried over


def test_non_empty_output_dir_is_refused_and_left_untouched(t5_model, corpus_files, tmp_path, isolated_hf_home, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = run_main(quick_args(t5_model, corpus_files, out, "--do_train", "--max_steps", "1"))
    assert code == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert os.listdir(out) == ["notes.txt"]
    # With --overwrite_output_dir the run goes ahead and the user's file survives.
    code = run_main(quick_args(t5_model, corpus_files, out, "--do_train", "--max_steps", "1", "--overwrite_output_dir"))
    assert isinstance(code, dict)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model_name_or_path", "./no/such/model"], "no such folder"),
        (["--train_file", "missing.csv"], "missing.csv: no such file"),
        (["--text_column", "body"], "'body' is not a column"),
    ],
)
def test_user_errors_exit_2_without_traceback_and_write_nothing(t5_model, corpus_files, tmp_path, flags, message):
    out = tmp_path / "out"
    result = run_script(TRAINER_SCRIPT, quick_args(t5_model, corpus_files, out, "--do_train") + flags)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_help_lists_every_flag():
    result = run_script(TRAINER_SCRIPT, ["-h"])
    assert result.returncode == 0
    for flag in (
        "--model_name_or_path",
        "--dataset_config_name",
        "--dataset_config",
        "--text_column",
        "--summary_column",
        "--source_prefix",
        "--max_source_length",
        "--val_max_target_length",
        "--pad_to_max_length",
        "--max_train_samples",
        "--max_predict_samples",
        "--num_beams",
        "--predict_with_generate",
        "--overwrite_output_dir",
        "--resume_from_checkpoint",
        "--push_to_hub_model_id",
        "--evaluation_strategy",
        "--group_by_length",
        "--tpu_num_cores",
        "--per_device_train_batch_size",
        "--save_total_limit",
        "--fp16",
        "--bf16",
        "--report_to",
    ):
        assert flag in result.stdout, flag
    assert "Column with the full text to summarize" in result.stdout


def test_legacy_flags_map_to_todays_arguments(tmp_path):
    from seqtune.arguments import DataArguments, ModelArguments, TrainerArguments, parse_arguments

    _, data, training = parse_arguments(
        (ModelArguments, DataArguments, TrainerArguments),
        [
            "--output_dir",
            str(tmp_path),
            "--dataset_config",
            "3.0.0",
            "--evaluation_strategy",
            "steps",
            "--eval_steps=7",
            "--group_by_length",
            "--push_to_hub_model_id",
            "me/model",
            "--tpu_num_cores",
            "8",
            "--per_device_train_batch_size=4",
            "--num_train_epochs",
            "2",
        ],
    )
    assert data.dataset_config_name == "3.0.0"
    assert training.eval_strategy == "steps" and training.eval_steps == 7
    assert training.train_sampling_strategy == "group_by_length"
    assert training.hub_model_id == "me/model"
    assert training.per_device_train_batch_size == 4 and training.num_train_epochs == 2


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_config_file_as_the_only_argument(t5_model, corpus_files, tmp_path, isolated_hf_home, suffix):
    out = tmp_path / "from-config"
    config = {
        "model_name_or_path": t5_model,
        "train_file": corpus_files["train"],
        "dataset_config": None,
        "output_dir": str(out),
        "do_train": True,
        "max_steps": 2,
        "source_prefix": "summarize: ",
        "max_source_length": 64,
        "report_to": "none",
    }
    path = tmp_path / f"run{suffix}"
    path.write_text(json.dumps(config) if suffix == ".json" else yaml.safe_dump(config))
    results = run_main([str(path)])
    assert isinstance(results, dict) and results["train_samples"] == 64


def test_t5_without_source_prefix_warns(t5_model, corpus_files, tmp_path, isolated_hf_home, caplog):
    args = [a for a in quick_args(t5_model, corpus_files, tmp_path / "o", "--do_train", "--max_steps", "1")]
    index = args.index("--source_prefix")
    del args[index : index + 2]
    with caplog.at_level("WARNING"):
        assert isinstance(run_main(args), dict)
    assert '--source_prefix "summarize: "' in caplog.text


def test_the_seed_command_runs_verbatim_offline(t5_model, tmp_path):
    """SEED.md §2, as written, with the model in the HF cache and cnn_dailymail as a local folder."""
    hf_home = tmp_path / "hf"
    put_in_hf_cache(hf_home, "google-t5/t5-small", t5_model)
    write_hub_layout(
        tmp_path, "cnn_dailymail", {"train": cnn_rows(12, 1), "validation": cnn_rows(5, 2), "test": cnn_rows(3, 3)}
    )
    command = (
        "--model_name_or_path google-t5/t5-small --do_train --do_eval --dataset_name cnn_dailymail "
        "--dataset_config 3.0.0 --source_prefix summarize: --output_dir /tmp/tst-summarization "
        "--per_device_train_batch_size=4 --per_device_eval_batch_size=4 --overwrite_output_dir "
        "--predict_with_generate"
    ).split()
    command[command.index("summarize:")] = "summarize: "
    result = run_script(
        TRAINER_SCRIPT,
        command,
        cwd=str(tmp_path),
        env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_json("/tmp/tst-summarization/all_results.json")
    assert results["train_samples"] == 12 and results["eval_samples"] == 5
    for key in ROUGE_KEYS:
        assert key in results


def test_known_data_set_folder_by_path_with_bart(bart_model, tmp_path, isolated_hf_home):
    folder = write_hub_layout(
        tmp_path / "sets", "cnn_dailymail", {"train": cnn_rows(8, 4), "validation": cnn_rows(4, 5)}
    )
    results = run_main(
        [
            "--model_name_or_path",
            bart_model,
            "--dataset_name",
            str(folder),
            "--dataset_config_name",
            "3.0.0",
            "--do_train",
            "--do_eval",
            "--max_steps",
            "2",
            "--output_dir",
            str(tmp_path / "o"),
            "--max_eval_samples",
            "3",
            "--report_to",
            "none",
        ]
    )
    assert isinstance(results, dict) and results["eval_samples"] == 3


def test_unknown_dataset_config_is_a_clear_error(tmp_path, t5_model, capsys):
    folder = write_hub_layout(tmp_path / "sets", "cnn_dailymail", {"train": cnn_rows(4, 4)})
    code = run_main(
        [
            "--model_name_or_path",
            t5_model,
            "--dataset_name",
            str(folder),
            "--dataset_config",
            "9.9.9",
            "--do_train",
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "9.9.9" in err and "3.0.0" in err


def test_missing_model_in_offline_cache_is_a_clear_error(corpus_files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    result = run_script(
        TRAINER_SCRIPT,
        quick_args("google-t5/t5-small", corpus_files, tmp_path / "o", "--do_train"),
        env={"HF_HOME": str(tmp_path / "empty-hf")},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "google-t5/t5-small" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert "Traceback" not in result.stderr


def test_new_model_folder_is_loadable_by_another_run(tmp_path, corpus_files, isolated_hf_home):
    base = make_base_model(str(tmp_path / "base"), kind="t5", seed=3)
    out = tmp_path / "first"
    assert isinstance(run_main(quick_args(base, corpus_files, out, "--do_train", "--max_steps", "2")), dict)
    results = run_main(quick_args(str(out), corpus_files, tmp_path / "second", "--do_eval", "--predict_with_generate"))
    assert results["eval_rouge1"] >= 0


def test_torch_compile_trains_saves_plain_weights_and_resumes(t5_model, corpus_files, tmp_path, isolated_hf_home):
    """--torch_compile (transformers' flag; aot_eager: graph capture without a C++ build): the saved
    model has the plain weight names and loads; its checkpoint resumes to the end."""
    from safetensors.torch import load_file

    args = [
        "--do_train",
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--report_to",
        "none",
        "--torch_compile_backend",
        "aot_eager",
    ]
    out = tmp_path / "compiled"
    result = run_script(TRAINER_SCRIPT, quick_args(t5_model, corpus_files, out, *args))
    assert result.returncode == 0, result.stderr[-4000:]
    assert set(load_file(out / "model.safetensors")) == set(load_file(os.path.join(t5_model, "model.safetensors")))
    resumed = run_script(
        TRAINER_SCRIPT,
        quick_args(
            t5_model, corpus_files, tmp_path / "resumed", *args, "--resume_from_checkpoint", str(out / "checkpoint-2")
        ),
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert read_json(tmp_path / "resumed" / "trainer_state.json")["global_step"] == 4


def test_a_second_run_on_a_live_output_dir_is_refused(t5_model, corpus_files, tmp_path, isolated_hf_home):
    """Issue 19: one run per output folder. The second run exits 2 at once and takes nothing of the first,
    whose log holds every step once. (The lock itself: tests/test_outputs.py.) The first run is long
    enough to outlive the second's start on any machine, and is stopped with Ctrl-C afterwards."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    steps = ["--do_train", "--max_steps", "100000", "--save_steps", "50", "--logging_steps", "1"]
    argv = [sys.executable, TRAINER_SCRIPT, *quick_args(t5_model, corpus_files, out, *steps)]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (out / "log_history.jsonl").exists():  # the first run is training
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline
            time.sleep(0.2)
        second = run_script(TRAINER_SCRIPT, argv[2:], timeout=300)
        assert first.poll() is None, first.stderr.read()
        assert second.returncode == 2, second.stderr
        assert "another seqtune run is using --output_dir" in second.stderr and "Traceback" not in second.stderr
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=120) == 130
    finally:
        if first.poll() is None:
            first.kill()
    with open(out / "log_history.jsonl", encoding="utf-8") as handle:
        steps_logged = [json.loads(line).get("step") for line in handle if '"loss"' in line]
    assert steps_logged and steps_logged == sorted(set(steps_logged))
