"""The Accelerate script, examples/pytorch/summarization/run_summarization_no_trainer.py (issue 3).

Every run here is a real subprocess on tiny models and local files: plain python,
`accelerate launch` (after `accelerate config default`, in a private HF_HOME), two CPU
processes through `accelerate launch` and through `torchrun`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import LOOP_SCRIPT, TRAINER_SCRIPT, quick_args, run_script, torchrun

from seqtune import checkpoints
from seqtune.demo import synthetic_corpus

pytestmark = pytest.mark.timeout(300)

# The flags of the Hugging Face no_trainer summarization script (issue 3, point 1).
HF_FLAGS = [
    "--model_name_or_path",
    "--config_name",
    "--tokenizer_name",
    "--dataset_name",
    "--dataset_config_name",
    "--dataset_config",
    "--train_file",
    "--validation_file",
    "--text_column",
    "--summary_column",
    "--source_prefix",
    "--max_source_length",
    "--max_target_length",
    "--val_max_target_length",
    "--pad_to_max_length",
    "--preprocessing_num_workers",
    "--overwrite_cache",
    "--max_train_samples",
    "--max_eval_samples",
    "--num_beams",
    "--per_device_train_batch_size",
    "--per_device_eval_batch_size",
    "--learning_rate",
    "--weight_decay",
    "--num_train_epochs",
    "--max_train_steps",
    "--gradient_accumulation_steps",
    "--lr_scheduler_type",
    "--num_warmup_steps",
    "--output_dir",
    "--seed",
    "--checkpointing_steps",
    "--resume_from_checkpoint",
    "--with_tracking",
    "--report_to",
    "--trust_remote_code",
    "--push_to_hub",
    "--hub_model_id",
    "--hub_token",
]
ROUGE_KEYS = ["eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_gen_len"]


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"


def loop_args(model, files, output_dir, *extra):
    """quick_args, minus what only the Trainer script takes, plus short generation."""
    return quick_args(model, files, output_dir, "--val_max_target_length", "8", *extra)


def weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def assert_same_weights(folder_a, folder_b) -> None:
    import torch

    a, b = weights(folder_a), weights(folder_b)
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def test_help_lists_the_flags_of_the_hugging_face_script():
    result = run_script(LOOP_SCRIPT, ["-h"])
    assert_ok(result)
    missing = [flag for flag in HF_FLAGS if flag not in result.stdout]
    assert not missing, missing
    for flag in ("--checkpointing_steps", "--do_predict", "--save_total_limit", "--max_grad_norm"):
        assert flag in result.stdout


def test_bad_loop_flags_are_user_errors(t5_model, corpus_files, tmp_path):
    from seqtune.recipes.accelerate_loop import main

    for extra in (
        ["--checkpointing_steps", "soon"],
        ["--gradient_accumulation_steps", "0"],
        ["--lr_scheduler_type", "x"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main(loop_args(t5_model, corpus_files, tmp_path / "out", *extra))
        assert exit_.value.code == 2
    assert not (tmp_path / "out").exists()  # refused before anything was written
    result = run_script(
        LOOP_SCRIPT, loop_args(t5_model, corpus_files, tmp_path / "out", "--checkpointing_steps", "soon")
    )
    assert result.returncode == 2 and "--checkpointing_steps" in result.stderr and "Traceback" not in result.stderr


def test_plain_python_evaluates_every_epoch_and_writes_what_the_trainer_script_writes(
    bart_model, corpus_files, tmp_path, isolated_hf_home
):
    out = tmp_path / "out"
    result = run_script(
        LOOP_SCRIPT,
        loop_args(
            bart_model,
            corpus_files,
            out,
            "--max_train_samples",
            "16",
            "--max_eval_samples",
            "5",
            "--max_predict_samples",
            "3",
            "--num_train_epochs",
            "2",
            "--checkpointing_steps",
            "epoch",
            "--save_total_limit",
            "1",
            "--do_predict",
            "--with_tracking",
            "--report_to",
            "tensorboard",
        ),
    )
    assert_ok(result)
    log = result.stderr + result.stdout
    assert "epoch 0: eval_rouge1=" in log and "epoch 1: eval_rouge1=" in log  # ROUGE after every epoch

    results = read_json(out / "all_results.json")
    for key in ROUGE_KEYS + [
        "eval_loss",
        "eval_samples",
        "train_loss",
        "train_samples",
        "total_flos",
        "predict_rouge1",
        "predict_samples",
    ]:
        assert key in results, key
    assert results["eval_samples"] == 5 and results["predict_samples"] == 3 and results["train_samples"] == 16
    assert read_json(out / "eval_results.json")["eval_rouge1"] == results["eval_rouge1"]
    predictions = (out / "generated_predictions.txt").read_text(encoding="utf-8").split("\n")
    assert len(predictions) == 4 and predictions[-1] == ""

    # Checkpoints went through seqtune.checkpoints: complete, rotated to the newest (2 epochs x 2 steps).
    # Named as the Hugging Face script names them: epoch_E, E the 0-based epoch.
    assert [os.path.basename(c) for c in checkpoints.list_checkpoints(str(out))] == ["epoch_1"]
    assert not any(checkpoints.is_leftover(name) for name in os.listdir(out))
    assert read_json(out / "seqtune_run.json")["status"] == "finished"
    card = (out / "README.md").read_text(encoding="utf-8")
    assert bart_model in card and "eval_rouge1" in card and "Accelerate" in card
    assert any("events.out.tfevents" in name for _, _, names in os.walk(out) for name in names)  # --with_tracking

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    AutoModelForSeq2SeqLM.from_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(out))


KILLER = """
import os, runpy, signal, sys
import seqtune.checkpoints as checkpoints

publish = checkpoints.publish_checkpoint

def publish_or_die(staged, output_dir, step, extra=None, name=None):
    # Everything of this checkpoint is on disk in the staging folder, nothing is published yet.
    if step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return publish(staged, output_dir, step, extra, name=name)

checkpoints.publish_checkpoint = publish_or_die
script = sys.argv.pop(1)
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
"""


def test_killed_while_writing_a_checkpoint_resumes_to_the_same_weights_bit_for_bit(
    dropout_model, corpus_files, tmp_path, isolated_hf_home
):
    # 20 examples / batch 4 = 5 batches an epoch; 2 batches a step: steps end after batches
    # 2, 4 and 5 (the epoch's end). Checkpoints at steps 2 (epoch 0, 4 batches in), 4 (epoch 1,
    # 2 batches in) and 6. Dropout is on, so the RNG state matters too.
    args = [
        "--max_train_samples",
        "20",
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "2",
        "--num_train_epochs",
        "2",
        "--checkpointing_steps",
        "2",
        "--max_eval_samples",
        "4",
        "--logging_steps",
        "1",
    ]
    straight = tmp_path / "straight"
    assert_ok(run_script(LOOP_SCRIPT, loop_args(dropout_model, corpus_files, straight, *args)))
    straight_results = read_json(straight / "all_results.json")

    # The same run, SIGKILLed while writing step_4: it stays unpublished.
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER, encoding="utf-8")
    killed = tmp_path / "killed"
    result = run_script(
        str(killer), [LOOP_SCRIPT, *loop_args(dropout_model, corpus_files, killed, *args)], env={"KILL_AT_STEP": "4"}
    )
    assert result.returncode == -9, result.stderr[-3000:]
    assert os.path.isdir(checkpoints.staging_path(str(killed), 4, "step_4"))  # killed mid-write
    assert [os.path.basename(c) for c in checkpoints.list_checkpoints(str(killed))] == ["step_2"]

    # The same command again resumes from the newest complete checkpoint (mid-epoch 0).
    result = run_script(LOOP_SCRIPT, loop_args(dropout_model, corpus_files, killed, *args))
    assert_ok(result)
    assert "Resumed at step 2 (epoch 0, 4 batches into it)" in result.stderr
    assert not os.path.exists(checkpoints.staging_root(str(killed)))
    assert_same_weights(straight, killed)
    resumed_results = read_json(killed / "all_results.json")
    for key in ["train_loss", "total_flos", "eval_loss"] + ROUGE_KEYS:
        assert resumed_results[key] == straight_results[key], key

    # --resume_from_checkpoint PATH, into a fresh output dir: from mid-epoch 1.
    explicit = tmp_path / "explicit"
    result = run_script(
        LOOP_SCRIPT,
        loop_args(dropout_model, corpus_files, explicit, *args, "--resume_from_checkpoint", str(straight / "step_4")),
    )
    assert_ok(result)
    assert "Resumed at step 4 (epoch 1, 2 batches into it)" in result.stderr
    assert_same_weights(straight, explicit)
    assert read_json(explicit / "all_results.json")["train_loss"] == straight_results["train_loss"]


def test_loss_and_weights_match_the_trainer_script(t5_model, corpus_files, tmp_path, isolated_hf_home, capsys):
    """Same model, data, seed, AdamW, linear schedule, clipping and batch order: after 6 steps the
    losses agree to float noise; the output files have the same keys."""
    import torch

    common = ["--max_eval_samples", "6", "--max_predict_samples", "4", "--weight_decay", "0.01"]
    trainer_out, loop_out = tmp_path / "trainer", tmp_path / "loop"
    trainer = run_script(
        TRAINER_SCRIPT,
        loop_args(
            t5_model,
            corpus_files,
            trainer_out,
            *common,
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--predict_with_generate",
            "--max_steps",
            "6",
            "--logging_steps",
            "1",
            "--save_steps",
            "3",
        ),
    )
    assert_ok(trainer)
    loop = run_script(
        LOOP_SCRIPT, loop_args(t5_model, corpus_files, loop_out, *common, "--do_predict", "--max_train_steps", "6")
    )
    assert_ok(loop)

    trainer_results, loop_results = (
        read_json(trainer_out / "all_results.json"),
        read_json(loop_out / "all_results.json"),
    )
    assert set(loop_results) == set(trainer_results)
    assert loop_results["train_loss"] == pytest.approx(trainer_results["train_loss"], rel=1e-5)
    assert loop_results["eval_loss"] == pytest.approx(trainer_results["eval_loss"], rel=1e-4)
    trained, looped = weights(trainer_out), weights(loop_out)
    assert max((trained[name] - looped[name]).abs().max().item() for name in trained) < 1e-4
    assert any(not torch.equal(trained[name], weights(t5_model)[name]) for name in trained)  # it did train

    # A Trainer checkpoint is not something the loop can resume from: a clear error, at once.
    from seqtune.recipes.accelerate_loop import main

    with pytest.raises(SystemExit) as exit_:
        main(
            loop_args(
                t5_model,
                corpus_files,
                tmp_path / "refused",
                "--resume_from_checkpoint",
                str(trainer_out / "checkpoint-3"),
            )
        )
    assert exit_.value.code == 2 and not (tmp_path / "refused").exists()
    assert "not a checkpoint of run_summarization_no_trainer.py" in capsys.readouterr().err


def accelerate_command() -> list[str]:
    executable = os.path.join(os.path.dirname(sys.executable), "accelerate")
    return [executable] if os.path.exists(executable) else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]


def test_accelerate_launch_after_accelerate_config_default(t5_model, corpus_files, tmp_path, isolated_hf_home):
    configured = subprocess.run(
        accelerate_command() + ["config", "default"], capture_output=True, text=True, timeout=120
    )
    assert configured.returncode == 0, configured.stderr
    config_file = os.path.join(isolated_hf_home, "accelerate", "default_config.yaml")
    assert os.path.isfile(config_file)  # in the test's HF_HOME, not the user's
    out = tmp_path / "out"
    result = run_script(
        LOOP_SCRIPT,
        loop_args(t5_model, corpus_files, out, "--max_train_steps", "2", "--max_eval_samples", "4"),
        launcher=accelerate_command() + ["launch"],
    )
    assert_ok(result)
    assert "on 1 process(es)" in result.stderr
    assert {"eval_rouge1", "train_loss"} <= set(read_json(out / "all_results.json"))


def test_the_seed_command_runs_verbatim_offline(t5_model, tmp_path):
    """SEED.md section 6, typed into a shell as written: google-t5/t5-small from the local HF cache,
    cnn_dailymail a local folder, ~ the test's home."""
    from conftest import cnn_rows, put_in_hf_cache, write_hub_layout

    hf_home = tmp_path / "hf"
    put_in_hf_cache(hf_home, "google-t5/t5-small", t5_model)
    write_hub_layout(tmp_path, "cnn_dailymail", {"train": cnn_rows(12, 1), "validation": cnn_rows(5, 2)})
    os.symlink(LOOP_SCRIPT, tmp_path / "run_summarization_no_trainer.py")
    command = (
        "accelerate launch run_summarization_no_trainer.py --model_name_or_path google-t5/t5-small "
        '--dataset_name cnn_dailymail --dataset_config "3.0.0" --source_prefix "summarize: " '
        "--output_dir ~/tmp/tst-summarization"
    )
    env = dict(
        os.environ,
        HOME=str(tmp_path),
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert_ok(result)
    results = read_json(tmp_path / "tmp" / "tst-summarization" / "all_results.json")
    assert results["train_samples"] == 12 and results["eval_samples"] == 5
    assert "epoch 2: eval_rouge1=" in result.stderr  # the default 3 epochs, each evaluated
    for key in ROUGE_KEYS:
        assert key in results


def distributed_world(folder) -> dict:
    """7 validation and 5 test examples: not a multiple of 2 processes x 2, so the samplers pad."""
    from seqtune.demo import write_jsonl

    rows = synthetic_corpus(32 + 7 + 5, seed=3)
    return {
        "train": write_jsonl(os.path.join(folder, "train.jsonl"), rows[:32]),
        "validation": write_jsonl(os.path.join(folder, "validation.jsonl"), rows[32:39]),
        "test": write_jsonl(os.path.join(folder, "test.jsonl"), rows[39:]),
    }


def check_two_process_run(result, out, references) -> None:
    from seqtune.metrics import rouge

    assert_ok(result)
    assert "on 2 process(es)" in result.stderr
    results = read_json(out / "all_results.json")
    assert results["eval_samples"] == 7 and results["predict_samples"] == 5  # each example once
    predictions = (out / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()
    assert len(predictions) == 5
    # The file holds the predictions in test-set order: scored against the references, they
    # give the ROUGE the run reported.
    assert rouge(predictions, references)["rouge1"] == pytest.approx(results["predict_rouge1"], abs=1e-3)
    # One checkpoint, with an RNG state from each process; written once, complete.
    (checkpoint,) = checkpoints.list_checkpoints(str(out))
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(checkpoint))
    assert not any(checkpoints.is_leftover(name) for name in os.listdir(out))


def run_two_processes(t5_model, tmp_path, launcher: list[str]) -> None:
    """The loop under a two-process launcher: 2 steps, a checkpoint, predictions; checked against one process."""
    files = distributed_world(str(tmp_path / "data"))
    out = tmp_path / "out"
    flags = ["--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--max_train_steps", "2"]
    flags += ["--checkpointing_steps", "2", "--do_predict"]
    result = run_script(LOOP_SCRIPT, loop_args(t5_model, files, out, *flags), launcher=launcher)
    references = [row["summary"] for row in synthetic_corpus(44, seed=3)[39:]]
    check_two_process_run(result, out, references)


def test_accelerate_launch_two_cpu_processes(t5_model, tmp_path, isolated_hf_home):
    launch = ["launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", "0"]
    run_two_processes(t5_model, tmp_path, accelerate_command() + launch)


def test_torchrun_two_processes(t5_model, tmp_path, isolated_hf_home):
    run_two_processes(t5_model, tmp_path, torchrun(2))


def test_torch_compile_trains_like_eager_and_its_checkpoints_resume(t5_model, corpus_files, tmp_path, isolated_hf_home):
    """--torch_compile wraps the model in torch.compile (aot_eager here: the same graph capture as
    inductor without a C++ build): same losses and weights as the eager run, plain weight names in
    the saved model, and a checkpoint of the compiled run resumes to the same weights."""
    args = [
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--max_eval_samples",
        "4",
        "--num_train_epochs",
        "9",
    ]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert_ok(run_script(LOOP_SCRIPT, loop_args(t5_model, corpus_files, eager, *args)))
    result = run_script(
        LOOP_SCRIPT, loop_args(t5_model, corpus_files, compiled, *args, "--torch_compile_backend", "aot_eager")
    )
    assert_ok(result)
    assert "torch.compile" in result.stderr  # it says so
    eager_weights, compiled_weights = weights(eager), weights(compiled)
    assert set(compiled_weights) == set(eager_weights)  # no "_orig_mod." prefixes
    assert max((eager_weights[n] - compiled_weights[n]).abs().max().item() for n in eager_weights) < 1e-4
    assert read_json(compiled / "all_results.json")["train_loss"] == pytest.approx(
        read_json(eager / "all_results.json")["train_loss"], rel=1e-4
    )

    resumed = tmp_path / "resumed"
    result = run_script(
        LOOP_SCRIPT,
        loop_args(
            t5_model,
            corpus_files,
            resumed,
            *args,
            "--torch_compile_backend",
            "aot_eager",
            "--resume_from_checkpoint",
            str(compiled / "step_2"),
        ),
    )
    assert_ok(result)
    assert "Resumed at step 2" in result.stderr
    resumed_weights = weights(resumed)
    assert max((resumed_weights[n] - compiled_weights[n]).abs().max().item() for n in compiled_weights) < 1e-5


# --------------------------------------------------------------------------- checkpoint names (the HF script's)


def checkpoint_names(out) -> list[str]:
    return [os.path.basename(c) for c in checkpoints.list_checkpoints(str(out))]


def test_step_checkpoints_are_step_n_and_a_rerun_resumes_from_the_newest(
    t5_model, corpus_files, tmp_path, isolated_hf_home
):
    """--checkpointing_steps N writes step_N (N the global step), as the Hugging Face script does; the same
    command with a larger --max_train_steps resumes from the newest and goes on; --save_total_limit deletes
    the oldest by step, whatever the checkpoints' names."""
    out = tmp_path / "out"
    common = ["--max_train_samples", "16", "--max_eval_samples", "4", "--num_train_epochs", "9"]
    first = run_script(
        LOOP_SCRIPT,
        loop_args(t5_model, corpus_files, out, *common, "--checkpointing_steps", "2", "--max_train_steps", "4"),
    )
    assert_ok(first)
    assert checkpoint_names(out) == ["step_2", "step_4"]
    assert not any(name.startswith("checkpoint-") for name in os.listdir(out))
    assert checkpoints.checkpoint_step(str(out / "step_4")) == 4

    # The same output dir, now saving every step and keeping 2: resumes from step_4, rotation drops step_2
    # and step_4 (older by step), the newest two stay.
    again = run_script(
        LOOP_SCRIPT,
        loop_args(
            t5_model,
            corpus_files,
            out,
            *common,
            "--checkpointing_steps",
            "1",
            "--save_total_limit",
            "2",
            "--max_train_steps",
            "6",
        ),
    )
    assert_ok(again)
    assert "Resumed at step 4" in again.stderr and str(out / "step_4") in again.stderr
    assert checkpoint_names(out) == ["step_5", "step_6"]


def test_epoch_checkpoints_are_epoch_e_and_resume_by_name(t5_model, corpus_files, tmp_path, isolated_hf_home):
    """--checkpointing_steps epoch writes epoch_0, epoch_1 (the 0-based epoch finished), as the Hugging Face
    script does; a rerun resumes from the newest, and --resume_from_checkpoint OUT/epoch_0 works."""
    out = tmp_path / "out"
    # 16 examples, batch 8: 2 steps an epoch.
    common = ["--max_train_samples", "16", "--max_eval_samples", "4", "--checkpointing_steps", "epoch"]
    assert_ok(run_script(LOOP_SCRIPT, loop_args(t5_model, corpus_files, out, *common, "--num_train_epochs", "2")))
    assert checkpoint_names(out) == ["epoch_0", "epoch_1"]
    assert [checkpoints.checkpoint_step(str(out / name)) for name in ("epoch_0", "epoch_1")] == [2, 4]

    # A larger run in the same output dir resumes from epoch_1 (step 4), then writes epoch_2.
    again = run_script(LOOP_SCRIPT, loop_args(t5_model, corpus_files, out, *common, "--num_train_epochs", "3"))
    assert_ok(again)
    assert "Resumed at step 4 (epoch 2, 0 batches into it)" in again.stderr
    assert checkpoint_names(out) == ["epoch_0", "epoch_1", "epoch_2"]

    # --resume_from_checkpoint OUT/epoch_0 into a fresh output dir (the Hugging Face script's usage).
    explicit = tmp_path / "explicit"
    result = run_script(
        LOOP_SCRIPT,
        loop_args(
            t5_model,
            corpus_files,
            explicit,
            *common,
            "--num_train_epochs",
            "2",
            "--resume_from_checkpoint",
            str(out / "epoch_0"),
        ),
    )
    assert_ok(result)
    assert "Resumed at step 2 (epoch 1, 0 batches into it)" in result.stderr
    assert checkpoint_names(explicit) == ["epoch_1"]
    assert_same_weights(out / "epoch_1", explicit / "epoch_1")

    # Then, in the same output dir, a checkpoint every step, keeping 2: resumes from epoch_2 (step 6), and
    # rotation deletes the oldest by step across names (epoch_0, epoch_1, then epoch_2 once step_8 is written).
    every_step = ["--max_train_samples", "16", "--max_eval_samples", "4", "--checkpointing_steps", "1"]
    every_step += ["--save_total_limit", "2", "--max_train_steps", "8"]
    steps = run_script(LOOP_SCRIPT, loop_args(t5_model, corpus_files, out, *every_step))
    assert_ok(steps)
    assert "Resumed at step 6 (epoch 3, 0 batches into it)" in steps.stderr
    assert checkpoint_names(out) == ["step_7", "step_8"]
