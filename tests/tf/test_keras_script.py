"""The TensorFlow script (examples/tensorflow/summarization/run_summarization.py), end to end.

These need TensorFlow, which lives in its own environment: `make test-tf` builds .venv-tf from
requirements-tf.txt and runs this folder there. The PyTorch side (the tiny models, and loading
the TF script's models back in PyTorch) runs in seqtune's main environment, whose python
`make test-tf` passes as SEQTUNE_TORCH_PYTHON. The main suite skips this module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed: `make test-tf` runs these tests in .venv-tf")

from conftest import REPO, cnn_rows, put_in_hf_cache, run_script, synthetic_corpus, write_hub_layout  # noqa: E402

from seqtune.demo import write_jsonl  # noqa: E402

TF_SCRIPT = os.path.join(REPO, "examples", "tensorflow", "summarization", "run_summarization.py")
ROUGE_KEYS = ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_gen_len")
pytestmark = pytest.mark.timeout(600)


# ---- the world: tiny models saved by transformers 5 (PyTorch), small data files


def torch_python() -> str:
    python = os.environ.get("SEQTUNE_TORCH_PYTHON") or os.path.join(REPO, ".venv", "bin", "python")
    if not os.path.exists(python):
        pytest.fail(f"seqtune's main environment is needed for the PyTorch side: {python} is missing (make install)")
    return python


def in_pytorch(code: str, *args: str) -> str:
    """Run `code` in seqtune's main (PyTorch, transformers 5) environment; return its stdout."""
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"))
    result = subprocess.run([torch_python(), "-c", code, *args], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("models") / "tiny-t5")
    in_pytorch("import sys; from seqtune.demo import make_base_model; make_base_model(sys.argv[1], kind='t5')", folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("models") / "tiny-bart")
    in_pytorch(
        "import sys; from seqtune.demo import make_base_model; make_base_model(sys.argv[1], kind='bart')", folder
    )
    return folder


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("corpus")
    rows = synthetic_corpus(32 + 8 + 6, seed=5)
    return {
        "train": write_jsonl(str(folder / "train.jsonl"), rows[:32]),
        "validation": write_jsonl(str(folder / "validation.jsonl"), rows[32:40]),
        "test": write_jsonl(str(folder / "test.jsonl"), rows[40:]),
    }


def flags(model: str, files: dict, out, *extra: str) -> list[str]:
    return [
        *("--model_name_or_path", model, "--train_file", files["train"], "--validation_file", files["validation"]),
        *("--test_file", files["test"], "--source_prefix", "summarize: ", "--output_dir", str(out)),
        *("--max_source_length", "64", "--max_target_length", "16", "--learning_rate", "1e-3", "--seed", "0"),
        *("--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8"),
        *extra,
    ]


def run_tf(args: list[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return run_script(TF_SCRIPT, args, env=env, timeout=540, **kwargs)


def assert_ok(result) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def weights(folder) -> dict:
    from safetensors.numpy import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def max_difference(a: dict, b: dict) -> float:
    import numpy as np

    assert set(a) == set(b)
    return max(float(np.max(np.abs(a[name] - b[name]))) for name in a)


# ---- the tests


def test_trains_evaluates_predicts_and_pytorch_reads_the_result(tiny_t5, files, tmp_path):
    """A whole run; its final folder loads in transformers 5 (PyTorch) and generates what TF generated, in order."""
    out = tmp_path / "out"
    result = run_tf(flags(tiny_t5, files, out, "--do_train", "--do_eval", "--do_predict", "--num_train_epochs", "2"))
    assert_ok(result)
    results = read_json(out / "all_results.json")
    for key in (*ROUGE_KEYS, "eval_loss", "eval_samples", "train_loss", "train_runtime", "train_samples"):
        assert key in results, sorted(results)
    assert results["train_samples"] == 32 and results["eval_samples"] == 8 and results["predict_samples"] == 6
    assert results["global_step"] == 8  # 32 examples / 8 per batch x 2 epochs
    # The Hugging Face TF script's unprefixed keys too (its test reads result["rouge1"]).
    assert results["rouge1"] == results["eval_rouge1"]
    assert (out / "report.html").exists() and (out / "README.md").exists()
    assert (out / "checkpoint-4").is_dir()  # one checkpoint per epoch; the last epoch ends with the final model
    log = [json.loads(line) for line in (out / "log_history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log if record.get("event") == "train"] == [8]  # --logging_steps 10
    predictions = (out / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()
    assert len(predictions) == 6

    # transformers 5 (PyTorch) loads the folder: greedy generation gives the TF predictions, in input order.
    pytorch_predictions = in_pytorch(
        """
import json, sys, torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
folder, test_file = sys.argv[1:]
model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
for line in open(test_file):
    text = "summarize: " + json.loads(line)["document"]
    inputs = tokenizer(text, max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_length=16, num_beams=1, do_sample=False)
    print(" ".join(tokenizer.decode(ids[0], skip_special_tokens=True).split()))
""",
        str(out),
        files["test"],
    ).splitlines()
    assert pytorch_predictions == predictions


def test_pytorch_trainer_output_round_trip(tiny_bart, files, tmp_path):
    """A BART fine-tuned by the PyTorch Trainer script goes into the TF script and back: same logits both ways."""
    pytorch_out = tmp_path / "pytorch"
    trainer_script = os.path.join(REPO, "examples", "pytorch", "summarization", "run_summarization.py")
    in_pytorch(
        "import sys, runpy; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')",
        trainer_script,
        *flags(tiny_bart, files, pytorch_out, "--do_train", "--max_steps", "2", "--report_to", "none"),
        *("--do_eval", "--predict_with_generate"),
    )
    # Its evaluation in TF (XLA generate) scores what the Trainer's did, also from a folder saved as the Hugging
    # Face Trainer script saves it: with the Trainer's training value use_cache: false (XLA generate then failed).
    as_hf_saves_it = tmp_path / "as-hf-saves-it"
    shutil.copytree(pytorch_out, as_hf_saves_it)
    config = read_json(as_hf_saves_it / "config.json")
    (as_hf_saves_it / "config.json").write_text(json.dumps({**config, "use_cache": False}))
    tf_eval = tmp_path / "tf-eval"
    assert_ok(run_tf(flags(str(as_hf_saves_it), files, tf_eval, "--do_eval")))
    pytorch_scores, tf_scores = read_json(pytorch_out / "eval_results.json"), read_json(tf_eval / "eval_results.json")
    assert tf_scores["eval_rouge1"] == pytest.approx(pytorch_scores["eval_rouge1"], abs=1e-3)
    assert tf_scores["eval_loss"] == pytest.approx(pytorch_scores["eval_loss"], rel=1e-3)
    tf_out = tmp_path / "tf"
    assert_ok(run_tf(flags(str(pytorch_out), files, tf_out, "--do_train", "--max_steps", "2")))
    code = """
import sys, torch
from transformers import AutoModelForSeq2SeqLM
model = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor([[5, 9, 12, 40, 7, 2]]); decoder = torch.tensor([[2, 0, 17, 23]])
with torch.no_grad():
    print(" ".join(f"{v:.6f}" for v in model(input_ids=ids, decoder_input_ids=decoder).logits[0, -1, :8].tolist()))
"""
    import numpy as np
    import tensorflow as tf  # noqa: F401

    from seqtune.arguments import ModelArguments
    from seqtune.modeling import load_seq2seq
    from seqtune.tf_modeling import create_tf_model

    for folder in (pytorch_out, tf_out):
        pytorch_logits = np.array(in_pytorch(code, str(folder)).split(), dtype=np.float32)
        _, model = load_seq2seq(ModelArguments(model_name_or_path=str(folder)), create_tf_model)
        tf_logits = model(
            input_ids=np.array([[5, 9, 12, 40, 7, 2]]), decoder_input_ids=np.array([[2, 0, 17, 23]])
        ).logits.numpy()[0, -1, :8]
        assert np.allclose(pytorch_logits, tf_logits, atol=1e-4), (folder, pytorch_logits, tf_logits)
    assert max_difference(weights(pytorch_out), weights(tf_out)) > 0  # the TF run did train


def test_mirrored_strategy_on_two_devices_trains_as_one(tiny_t5, files, tmp_path):
    """MirroredStrategy over 2 logical CPU devices x 4 = one device x 8: the same weights after 4 steps."""
    common = ("--do_train", "--max_steps", "4", "--logging_steps", "1", "--max_target_length", "12")
    one = flags(tiny_t5, files, tmp_path / "one", *common)
    two = flags(tiny_t5, files, tmp_path / "two", *common, "--per_device_train_batch_size", "4")
    assert_ok(run_tf(one))
    result = run_tf(two, env={"SEQTUNE_TF_CPU_DEVICES": "2"})
    assert_ok(result)
    assert "MirroredStrategy over 2 logical CPU devices" in result.stderr
    assert max_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < 2e-5
    losses = [
        [
            r["loss"]
            for r in map(json.loads, (tmp_path / name / "log_history.jsonl").read_text().splitlines())
            if r.get("event") == "train"
        ]
        for name in ("one", "two")
    ]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], abs=1e-4)


def test_tpu_without_a_tpu_is_one_message(tiny_t5, files, tmp_path):
    out = tmp_path / "out"
    # A TPU name is looked up on the Compute Engine metadata server: a closed port on loopback stands in for it.
    no_metadata_server = {"GCE_METADATA_HOST": "127.0.0.1:9"}
    result = run_tf(flags(tiny_t5, files, out, "--do_train", "--tpu", "name_of_tpu_resource"), env=no_metadata_server)
    assert result.returncode == 2
    assert "seqtune: error: --tpu name_of_tpu_resource: no TPU could be reached" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()  # nothing written


def test_kill_and_resume_ends_on_the_uninterrupted_weights(tiny_t5, files, tmp_path):
    """SIGKILL after a checkpoint; the same command resumes from it and ends where an unbroken run ends."""
    common = ("--do_train", "--max_steps", "8", "--save_steps", "2", "--logging_steps", "1")
    assert_ok(run_tf(flags(tiny_t5, files, tmp_path / "whole", *common)))
    out = tmp_path / "killed"
    command = [sys.executable, TF_SCRIPT, *flags(tiny_t5, files, out, *common)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while not (out / "checkpoint-4").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / "checkpoint-4").is_dir() and not (out / "model.safetensors").exists()
    result = run_tf(flags(tiny_t5, files, out, *common))
    assert_ok(result)
    assert "Resuming from" in result.stderr, result.stderr[-3000:]
    assert max_difference(weights(tmp_path / "whole"), weights(out)) < 1e-6, result.stderr[-5000:]
    # --resume_from_checkpoint takes a given one.
    again = run_tf(
        flags(tiny_t5, files, tmp_path / "given", *common, "--resume_from_checkpoint", str(out / "checkpoint-6"))
    )
    assert_ok(again)
    assert "(step 6)" in again.stderr
    assert max_difference(weights(tmp_path / "whole"), weights(tmp_path / "given")) < 1e-6


def test_bad_input_is_one_message_and_nothing_is_lost(tiny_t5, files, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('document,summary\n"a text,a summary\n', encoding="utf-8")
    out = tmp_path / "out"
    result = run_tf(flags(tiny_t5, dict(files, train=str(bad)), out, "--do_train"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(bad) in result.stderr and "line 2" in result.stderr
    assert not out.exists()
    # A finished run's output dir is not started over without --overwrite_output_dir; others' files stay.
    done = tmp_path / "done"
    assert_ok(run_tf(flags(tiny_t5, files, done, "--do_train", "--max_steps", "1")))
    (done / "notes.txt").write_text("mine")
    before = (done / "model.safetensors").read_bytes()
    result = run_tf(flags(tiny_t5, files, done, "--do_train", "--max_steps", "1"))
    assert result.returncode == 2 and "already holds a finished seqtune run" in result.stderr
    assert (done / "model.safetensors").read_bytes() == before and (done / "notes.txt").read_text() == "mine"
    # --use_peft and --streaming are the PyTorch scripts'.
    result = run_tf(flags(tiny_t5, files, out, "--do_train", "--use_peft"))
    assert result.returncode == 2 and "--use_peft (LoRA) is for the PyTorch scripts only" in result.stderr


def test_csv_files_and_max_samples(tiny_t5, tmp_path):
    import pandas as pd

    rows = synthetic_corpus(20, seed=9)
    paths = {}
    for split, part in (("train", rows[:12]), ("validation", rows[12:18]), ("test", rows[18:])):
        paths[split] = str(tmp_path / f"{split}.csv")
        pd.DataFrame([{"text": r["document"], "headline": r["summary"]} for r in part]).to_csv(
            paths[split], index=False
        )
    out = tmp_path / "out"
    result = run_tf(
        flags(tiny_t5, paths, out, "--do_train", "--do_eval", "--text_column", "text", "--summary_column", "headline")
        + ["--max_train_samples", "8", "--max_eval_samples", "3", "--max_steps", "1"]
    )
    assert_ok(result)
    results = read_json(out / "all_results.json")
    assert results["train_samples"] == 8 and results["eval_samples"] == 3


def test_the_seed_command_runs_verbatim_offline(tiny_t5, tmp_path):
    """SEED.md §3 as written: google-t5/t5-small from the local HF cache, cnn_dailymail a local folder."""
    hf_home = tmp_path / "hf"
    put_in_hf_cache(hf_home, "google-t5/t5-small", tiny_t5)
    write_hub_layout(tmp_path, "cnn_dailymail", {"train": cnn_rows(16, 1), "validation": cnn_rows(4, 2)})
    target = "/tmp/tst-summarization"
    if os.path.exists(target):  # the PyTorch seed test's run (it passes --overwrite_output_dir; this command does not)
        assert os.path.exists(os.path.join(target, "seqtune_run.json")), f"{target} holds someone else's files"
        shutil.rmtree(target)
    command = (
        "--model_name_or_path google-t5/t5-small --dataset_name cnn_dailymail --dataset_config 3.0.0 "
        "--output_dir /tmp/tst-summarization --per_device_train_batch_size 8 --per_device_eval_batch_size 16 "
        "--num_train_epochs 3 --do_train --do_eval"
    ).split()
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = run_tf(command, env=env, cwd=str(tmp_path))
    assert_ok(result)
    results = read_json(os.path.join(target, "all_results.json"))
    assert results["train_samples"] == 16 and results["eval_samples"] == 4 and results["global_step"] == 6
    for key in ROUGE_KEYS:
        assert key in results
    assert '--source_prefix "summarize: "' in result.stderr  # T5 without its prefix: the warning says so


def test_transformers_tf_example_test_arguments(tiny_t5, tmp_path, monkeypatch):
    """transformers' examples/tensorflow/test_tensorflow_examples.py::test_run_summarization, its exact
    arguments on its XSum sample, main() called in-process. Two substitutions, as for the PyTorch scripts
    (tests/test_hf_example_tests.py): the local tiny T5 stands in for t5-small, and the ROUGE thresholds (a
    pretrained model's) become "the key is there, in [0, 100]"."""
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(os.path.dirname(TF_SCRIPT))
    import run_summarization

    tmp_dir = str(tmp_path / "out")
    testargs = f"""
        run_summarization.py
        --model_name_or_path {tiny_t5}
        --train_file tests/fixtures/tests_samples/xsum/sample.json
        --validation_file tests/fixtures/tests_samples/xsum/sample.json
        --output_dir {tmp_dir}
        --overwrite_output_dir
        --max_steps=50
        --warmup_steps=8
        --do_train
        --do_eval
        --learning_rate=2e-4
        --per_device_train_batch_size=2
        --per_device_eval_batch_size=1
    """.split()
    monkeypatch.setattr(sys, "argv", testargs)
    run_summarization.main()
    with open(os.path.join(tmp_dir, "all_results.json")) as handle:
        result = json.load(handle)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert 0 <= result[key] <= 100, (key, result)
    assert result["global_step"] == 50


def test_the_shared_core_needs_no_torch():
    """The TF recipe's environment has no torch; the core modules it uses import there (one core, not a copy)."""
    import importlib
    import importlib.util

    assert importlib.util.find_spec("torch") is None
    for name in ("data", "metrics", "outputs", "report", "card", "hub", "checkpoints", "generation", "recipes.common"):
        importlib.import_module(f"seqtune.{name}")


def test_help_lists_the_flags():
    result = run_tf(["-h"])
    assert_ok(result)
    for flag in ("--tpu", "--dataset_config_name", "--summary_column", "--max_predict_samples", "--push_to_hub"):
        assert flag in result.stdout


def test_push_to_hub_sends_checkpoints_and_the_final_model(tiny_t5, files, tmp_path):
    """--push_to_hub with --push_to_hub_model_id against the local fake hub (tests/fake_hub.py; loopback only)."""
    from fake_hub import FakeHub, User, hub_env

    token = "hf_seqtuneTensorFlowToken4Xy"
    hub = FakeHub({token: User("alice")}).start()
    try:
        env = hub_env(hub.url, tmp_path, token)
        out = tmp_path / "out"
        extra = ("--do_train", "--max_steps", "4", "--save_steps", "2", "--push_to_hub")
        result = run_tf(flags(tiny_t5, files, out, *extra, "--push_to_hub_model_id", "tf-summarizer"), env=env)
        assert_ok(result)
        repo = hub.repos["alice/tf-summarizer"]
        assert repo.files["model.safetensors"] == (out / "model.safetensors").read_bytes()
        assert "Keras fit (TensorFlow)" in repo.files["README.md"].decode()
        assert hub.commit_messages("alice/tf-summarizer")[-1] == "End of training"
        assert token not in result.stderr + result.stdout
    finally:
        hub.stop()
