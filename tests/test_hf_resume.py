"""Switching mid-run: the same command run with seqtune resumes the checkpoints the Hugging Face scripts wrote.

The foreign checkpoints are built with the libraries' own calls (transformers' Seq2SeqTrainer; Accelerate's
save_state as the no_trainer script calls it), each in its own process, never with seqtune.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from conftest import LOOP_SCRIPT, TRAINER_SCRIPT, quick_args, run_script

from seqtune import checkpoints as ck

TESTS = os.path.dirname(os.path.abspath(__file__))


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"


def tokenized_rows(model: str, train_file: str, count: int) -> list[dict]:
    """The first `count` training rows, tokenized by hand as the Hugging Face scripts do."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    with open(train_file, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle][:count]
    tokenized = []
    for row in rows:
        features = tokenizer("summarize: " + row["document"], max_length=96, truncation=True)
        features["labels"] = tokenizer(text_target=row["summary"], max_length=24, truncation=True)["input_ids"]
        tokenized.append(dict(features))
    return tokenized


def build_trainer_checkpoint(model: str, train_file: str, output_dir: str) -> None:
    """transformers' own Seq2SeqTrainer: 2 steps, a checkpoint at step 2 (run in a process of its own)."""
    from datasets import Dataset
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(model)
    network = AutoModelForSeq2SeqLM.from_pretrained(model)
    arguments = Seq2SeqTrainingArguments(
        output_dir=output_dir,
        max_steps=2,
        save_steps=2,
        save_strategy="steps",
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    trainer = Seq2SeqTrainer(
        model=network,
        args=arguments,
        train_dataset=Dataset.from_list(tokenized_rows(model, train_file, 32)),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=network),
    )
    trainer.train()


def build_no_trainer_checkpoint(model: str, train_file: str, folder: str, steps: str) -> None:
    """The Hugging Face no_trainer script's checkpoint: `steps` optimizer steps, then `accelerator.save_state`."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, get_scheduler

    accelerator = Accelerator(cpu=True)
    tokenizer = AutoTokenizer.from_pretrained(model)
    network = AutoModelForSeq2SeqLM.from_pretrained(model)
    loader = DataLoader(
        tokenized_rows(model, train_file, 64),
        shuffle=True,
        collate_fn=DataCollatorForSeq2Seq(tokenizer, model=network),
        batch_size=8,
    )
    no_decay = ["bias", "LayerNorm.weight", "layer_norm.weight"]  # as the no_trainer script groups them
    groups = [
        {
            "params": [p for n, p in network.named_parameters() if not any(nd in n for nd in no_decay)],
            "weight_decay": 0.0,
        },
        {"params": [p for n, p in network.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0, num_training_steps=16)
    network, optimizer, loader, scheduler = accelerator.prepare(network, optimizer, loader, scheduler)
    network.train()
    batches = iter(loader)
    for _ in range(int(steps)):
        loss = network(**next(batches)).loss
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    accelerator.save_state(folder)


def in_own_process(function: str, *args: str) -> None:
    code = f"import sys; sys.path.insert(0, {TESTS!r}); import test_hf_resume as t; t.{function}(*sys.argv[1:])"
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr[-4000:]


def optimizer_step_count(folder) -> float:
    import torch

    state = torch.load(os.path.join(folder, "optimizer.bin"), map_location="cpu", weights_only=False)["state"]
    steps = {float(entry["step"]) for entry in state.values()}
    assert len(steps) == 1, steps
    return steps.pop()


# --------------------------------------------------------------------------- the Trainer script


def test_trainer_script_resumes_a_checkpoint_of_transformers_trainer(t5_model, corpus_files, tmp_path):
    out = tmp_path / "out"
    in_own_process("build_trainer_checkpoint", t5_model, corpus_files["train"], str(out))
    assert sorted(os.listdir(out)) == ["checkpoint-2"]
    assert not (out / "checkpoint-2" / ck.MANIFEST_NAME).exists()

    result = run_script(
        TRAINER_SCRIPT, quick_args(t5_model, corpus_files, out, "--do_train", "--max_steps", "4", "--save_steps", "2")
    )
    assert_ok(result)
    assert "checkpoint-2 has no seqtune manifest: written by transformers' Trainer; resuming" in result.stderr
    assert f"Resuming from {out / 'checkpoint-2'}" in result.stderr
    assert read_json(out / "trainer_state.json")["global_step"] == 4
    assert ck.is_complete(str(out / "checkpoint-4"))  # seqtune's own from here on
    assert read_json(out / "seqtune_run.json")["status"] == "finished"


# --------------------------------------------------------------------------- the no_trainer script


def test_no_trainer_script_resumes_a_step_checkpoint_of_the_hugging_face_script(t5_model, corpus_files, tmp_path):
    out = tmp_path / "out"
    in_own_process("build_no_trainer_checkpoint", t5_model, corpus_files["train"], str(out / "step_2"), "2")
    assert not (out / "step_2" / "custom_checkpoint_0.pkl").exists()
    assert optimizer_step_count(out / "step_2") == 2

    args = ["--val_max_target_length", "8", "--max_train_steps", "4", "--checkpointing_steps", "2"]
    result = run_script(LOOP_SCRIPT, quick_args(t5_model, corpus_files, out, *args))
    assert_ok(result)
    assert "step_2 has no seqtune manifest: written by Accelerate's save_state" in result.stderr
    assert "Resumed at step 2 (epoch 0, 2 batches into it)." in result.stderr
    assert "the training loss before the switch is not known" in result.stderr
    assert ck.is_complete(str(out / "step_4"))
    assert ck.checkpoint_step(str(out / "step_4")) == 4
    assert optimizer_step_count(out / "step_4") == 4  # the optimizer's state went on from step 2
    train_loss = read_json(out / "train_results.json")["train_loss"]
    assert 0 < train_loss < 100  # averaged over the 2 steps taken here


def test_no_trainer_script_resumes_an_epoch_checkpoint_given_by_path(t5_model, corpus_files, tmp_path):
    other = tmp_path / "hf-run"
    in_own_process("build_no_trainer_checkpoint", t5_model, corpus_files["train"], str(other / "epoch_0"), "8")
    out = tmp_path / "out"
    args = ["--val_max_target_length", "8", "--max_train_steps", "10", "--checkpointing_steps", "2"]
    result = run_script(
        LOOP_SCRIPT,
        quick_args(t5_model, corpus_files, out, *args, "--resume_from_checkpoint", str(other / "epoch_0")),
    )
    assert_ok(result)
    assert "epoch_0 has no seqtune manifest: written by Accelerate's save_state" in result.stderr
    assert "Resumed at step 8 (epoch 1, 0 batches into it)." in result.stderr
    assert [os.path.basename(c) for c in ck.list_checkpoints(str(out))] == ["step_10"]
    assert optimizer_step_count(out / "step_10") == 10


def test_no_trainer_script_refuses_a_checkpoint_of_transformers_trainer(t5_model, corpus_files, tmp_path):
    out = tmp_path / "out"
    in_own_process("build_trainer_checkpoint", t5_model, corpus_files["train"], str(out))
    result = run_script(LOOP_SCRIPT, quick_args(t5_model, corpus_files, out, "--max_train_steps", "4"))
    assert result.returncode == 2
    assert "is not a checkpoint of run_summarization_no_trainer.py" in result.stderr


def test_a_run_started_afresh_over_foreign_checkpoints_never_resumes_from_them(t5_model, corpus_files, tmp_path):
    """--overwrite_output_dir keeps the Hugging Face scripts' checkpoints (not seqtune's to delete) but the run
    record leaves them out: a rerun of a run stopped before its own first checkpoint starts afresh again."""
    from seqtune.checkpoints import publish_checkpoint, staging_path
    from seqtune.outputs import prepare_output_dir

    output_dir = tmp_path / "run"
    foreign = output_dir / "checkpoint-9"
    foreign.mkdir(parents=True)
    for name in ("trainer_state.json", "optimizer.pt", "model.safetensors"):
        (foreign / name).write_bytes(b"x")
    assert prepare_output_dir(str(output_dir), False, None, True) == str(foreign)  # switching: taken
    assert prepare_output_dir(str(output_dir), True, None, True) is None  # afresh over it
    assert foreign.is_dir()  # kept
    assert prepare_output_dir(str(output_dir), False, None, True) is None  # and never resumed from
    staged = staging_path(str(output_dir), 2)
    os.makedirs(staged)
    (tmp_path / "w").write_bytes(b"w")
    shutil.copy(tmp_path / "w", os.path.join(staged, "model.safetensors"))
    own = publish_checkpoint(staged, str(output_dir), 2)
    assert prepare_output_dir(str(output_dir), False, None, True) == own  # seqtune's own one, though step 2 < 9
