"""Unit tests of seqtune.outputs: the output-dir rules and the writers, on plain folders (no model, no training)."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re

import pytest

from seqtune.checkpoints import publish_checkpoint, staging_path
from seqtune.errors import UserError
from seqtune.outputs import (
    atomic_write_json,
    atomic_write_text,
    mark_run_finished,
    mark_run_started,
    prepare_output_dir,
    record_files,
    save_final_model,
    shareable_files,
    write_predictions,
    write_results,
)

# ---------------------------------------------------------------- helpers


@dataclasses.dataclass
class ModelArgs:
    model_name_or_path: str = "tiny-t5"
    token: str | None = "hf_SECRET_model_token"


@dataclasses.dataclass
class RunArgs:
    output_dir: str = "out"
    learning_rate: float = 1e-3
    hub_token: str | None = "hf_SECRET_hub_token"
    push_to_hub_token: str | None = None


def make_checkpoint(output_dir, step: int, content: bytes = b"weights", name: str | None = None) -> str:
    """A complete checkpoint-`step` (or `name`: step_N, epoch_E), written the way seqtune writes one: staged,
    then published."""
    staged = staging_path(str(output_dir), step, name)
    os.makedirs(staged)
    with open(os.path.join(staged, "model.bin"), "wb") as handle:
        handle.write(content)
    return publish_checkpoint(staged, str(output_dir), step, name=name)


def make_leftovers(output_dir) -> list[str]:
    """Scratch a killed run leaves: a staging folder, a trash folder and a temporary file."""
    staging = output_dir / ".seqtune-staging" / "checkpoint-9"
    staging.mkdir(parents=True)
    (staging / "model.bin").write_bytes(b"half")
    trash = output_dir / ".seqtune-trash-checkpoint-1-123-456"
    trash.mkdir()
    (trash / "model.bin").write_bytes(b"old")
    (output_dir / ".seqtune-tmp-123-all_results.json").write_text("{")
    return [".seqtune-staging", ".seqtune-trash-checkpoint-1-123-456", ".seqtune-tmp-123-all_results.json"]


def snapshot(folder) -> dict:
    """Every entry below `folder` with its bytes (None for folders), to tell that nothing changed."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = handle.read()
    return found


def leftovers_in(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".seqtune-")]


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def start_run(output_dir, argv=("--do_train",)) -> None:
    mark_run_started(str(output_dir), list(argv), [ModelArgs(), RunArgs(output_dir=str(output_dir))])


# ---------------------------------------------------------------- prepare_output_dir: start afresh


def test_a_new_folder_starts_afresh_and_nothing_is_created(tmp_path):
    output_dir = tmp_path / "new" / "run"
    assert prepare_output_dir(str(output_dir), False, None, True) is None
    assert not (tmp_path / "new").exists()


def test_an_empty_folder_starts_afresh_and_stays_empty(tmp_path):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    assert prepare_output_dir(str(output_dir), False, None, True) is None
    assert os.listdir(output_dir) == []


def test_a_folder_holding_only_leftovers_counts_as_empty_and_is_cleaned(tmp_path):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    make_leftovers(output_dir)
    assert prepare_output_dir(str(output_dir), False, None, True) is None
    assert os.listdir(output_dir) == []


def test_a_file_as_output_dir_is_refused(tmp_path):
    output_dir = tmp_path / "run.txt"
    output_dir.write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(UserError, match=r"run\.txt is a file\. Fix: pass a folder path"):
            prepare_output_dir(str(output_dir), overwrite, None, True)
    assert output_dir.read_text() == "mine"


def test_an_output_dir_below_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"cannot create --output_dir .*notes\.txt is a file"):
        prepare_output_dir(str(tmp_path / "notes.txt" / "run"), False, None, True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- prepare_output_dir: refuse


@pytest.mark.parametrize("do_train", [True, False])
def test_a_folder_of_foreign_files_is_refused_and_left_untouched(tmp_path, do_train):
    output_dir = tmp_path / "mine"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_bytes(b"my notes\n")
    (output_dir / "README.md").write_bytes(b"# my project\n")
    (output_dir / "data").mkdir()
    (output_dir / "data" / "train.jsonl").write_bytes(b'{"document": "a", "summary": "b"}\n')
    before = snapshot(output_dir)
    with pytest.raises(UserError, match=r"already holds files and no checkpoint.*--overwrite_output_dir") as raised:
        prepare_output_dir(str(output_dir), False, None, do_train)
    assert str(output_dir) in str(raised.value) and "notes.txt" in str(raised.value)
    assert snapshot(output_dir) == before


def test_a_finished_run_without_checkpoint_is_refused_with_the_fix(tmp_path):
    output_dir = tmp_path / "run"
    start_run(output_dir)
    write_results(str(output_dir), "eval", {"eval_rouge1": 12.5})
    mark_run_finished(str(output_dir), [])
    before = snapshot(output_dir)
    with pytest.raises(UserError, match=r"already holds a finished seqtune run.*Fix: pass --overwrite_output_dir"):
        prepare_output_dir(str(output_dir), False, None, True)
    assert snapshot(output_dir) == before


# ---------------------------------------------------------------- prepare_output_dir: resume / start again


def test_resumes_from_the_newest_complete_checkpoint(tmp_path, caplog):
    output_dir = tmp_path / "run"
    start_run(output_dir)
    make_checkpoint(output_dir, 2)
    make_checkpoint(output_dir, 10)
    make_checkpoint(output_dir, 4)
    incomplete = output_dir / "checkpoint-12"  # a higher step, but no manifest: a kill while it was written
    incomplete.mkdir()
    (incomplete / "model.bin").write_bytes(b"weights")
    leftovers = make_leftovers(output_dir)
    with caplog.at_level("WARNING"):
        resumed = prepare_output_dir(str(output_dir), False, None, True)
    assert resumed == str(output_dir / "checkpoint-10")
    assert "checkpoint-12" in caplog.text  # the log says which folder was skipped
    assert not any(name in os.listdir(output_dir) for name in leftovers)
    assert (incomplete / "model.bin").read_bytes() == b"weights"  # skipped, not deleted
    assert {"checkpoint-2", "checkpoint-4", "checkpoint-10", "checkpoint-12"} <= set(os.listdir(output_dir))


def test_resumes_from_the_newest_by_step_whatever_its_name(tmp_path):
    """The no_trainer script's step_N and epoch_E count as checkpoints, ordered by the step their manifests
    record: epoch_1 (step 12) is newer than step_10 and checkpoint-11."""
    output_dir = tmp_path / "run"
    start_run(output_dir)
    make_checkpoint(output_dir, 10, name="step_10")
    make_checkpoint(output_dir, 12, name="epoch_1")
    make_checkpoint(output_dir, 6, name="epoch_0")
    make_checkpoint(output_dir, 11)
    incomplete = output_dir / "step_14"  # no manifest: a kill while it was written
    incomplete.mkdir()
    assert prepare_output_dir(str(output_dir), False, None, True) == str(output_dir / "epoch_1")
    explicit = prepare_output_dir(str(output_dir), False, str(output_dir / "epoch_0"), True)
    assert explicit == str(output_dir / "epoch_0")


def hf_trainer_checkpoint(output_dir, step: int):
    """The files transformers' Trainer writes in checkpoint-`step` (no seqtune manifest)."""
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        (folder / name).write_bytes(b"{}")
    return folder


def test_a_folder_of_transformers_trainer_is_resumed_not_refused(tmp_path, caplog):
    """The same command run with seqtune instead of the Hugging Face script: no seqtune_run.json there."""
    output_dir = tmp_path / "run"
    hf_trainer_checkpoint(output_dir, 2)
    newest = hf_trainer_checkpoint(output_dir, 4)
    half_written = output_dir / "checkpoint-6"  # transformers was killed before trainer_state.json
    half_written.mkdir()
    (half_written / "model.safetensors").write_bytes(b"{}")
    with caplog.at_level("INFO"):
        assert prepare_output_dir(str(output_dir), False, None, True) == str(newest)
    assert "checkpoint-4 has no seqtune manifest: written by transformers' Trainer; resuming from it" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        given = prepare_output_dir(str(output_dir), False, str(output_dir / "checkpoint-2"), True)
    assert given == str(output_dir / "checkpoint-2")
    assert "checkpoint-2 has no seqtune manifest: written by transformers' Trainer" in caplog.text


def test_overwrite_removes_step_and_epoch_checkpoints_too(tmp_path):
    output_dir = tmp_path / "run"
    start_run(output_dir)
    make_checkpoint(output_dir, 2, name="step_2")
    make_checkpoint(output_dir, 4, name="epoch_1")
    (output_dir / "step_6").mkdir()  # incomplete, in a seqtune run's folder
    (output_dir / "epoch_notes").mkdir()  # the user's: not a checkpoint name
    assert prepare_output_dir(str(output_dir), True, None, True) is None
    assert sorted(os.listdir(output_dir)) == ["epoch_notes"]


def test_a_folder_with_only_incomplete_checkpoints_is_not_resumed(tmp_path):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "checkpoint-3").mkdir()
    (output_dir / "checkpoint-3" / "model.bin").write_bytes(b"partial")
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        prepare_output_dir(str(output_dir), False, None, True)


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path):
    output_dir = tmp_path / "run"
    start_run(output_dir)
    assert read_json(output_dir / "seqtune_run.json")["status"] == "running"
    make_leftovers(output_dir)
    assert prepare_output_dir(str(output_dir), False, None, True) is None
    assert leftovers_in(output_dir) == []
    assert sorted(os.listdir(output_dir)) == ["seqtune_args.json", "seqtune_run.json"]


# ---------------------------------------------------------------- prepare_output_dir: --overwrite_output_dir


def test_overwrite_removes_only_seqtunes_own_files(tmp_path):
    output_dir = tmp_path / "run"
    start_run(output_dir)
    for name in ("config.json", "model.safetensors"):  # the final model, recorded in the run marker
        (output_dir / name).write_bytes(b"model")
    mark_run_finished(str(output_dir), ["config.json", "model.safetensors"])
    write_results(str(output_dir), "train", {"train_loss": 1.5})
    write_results(str(output_dir), "eval", {"eval_rouge1": 10.0})
    write_predictions(str(output_dir), ["a summary"])
    atomic_write_text(str(output_dir / "README.md"), "---\nlicense: apache-2.0\n---\n# model card\n")
    (output_dir / "plot_training_loss.png").write_bytes(b"png")
    record_files(str(output_dir), ["plot_training_loss.png"])  # as the report records its plots
    (output_dir / "runs").mkdir()
    (output_dir / "runs" / "events.out").write_bytes(b"tb")
    make_checkpoint(output_dir, 2)
    (output_dir / "checkpoint-5").mkdir()  # incomplete
    make_leftovers(output_dir)
    # The user's own files, kept in the same folder.
    (output_dir / "notes.txt").write_bytes(b"my notes\r\nline 2")
    (output_dir / "my_vocab.txt").write_bytes(b"not recorded as a model file")
    (output_dir / "my_plot.png").write_bytes(b"\x89PNG mine")
    (output_dir / "data").mkdir()
    (output_dir / "data" / "train.jsonl").write_bytes(b"{}\n")
    user_files = {
        k: v
        for k, v in snapshot(output_dir).items()
        if k.split(os.sep)[0] in ("notes.txt", "my_vocab.txt", "my_plot.png", "data")
    }

    assert prepare_output_dir(str(output_dir), True, None, True) is None
    assert snapshot(output_dir) == user_files


@pytest.mark.parametrize("name", ["README.md", "config.json", "all_results.json", "report.html", "vocab.txt"])
@pytest.mark.parametrize("seqtune_run", [False, True], ids=["user-folder", "seqtune-run"])
def test_overwrite_never_writes_over_a_users_file_of_a_name_seqtune_writes(name, seqtune_run, tmp_path):
    """Issue 19: seqtune deletes only what its record says it wrote, and refuses to start where the run
    would write over a user's file of the same name."""
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    if seqtune_run:  # a finished run whose record does not hold `name` (the user put it there afterwards)
        start_run(output_dir)
        mark_run_finished(str(output_dir), ["model.safetensors"])
    (output_dir / name).write_text("the user's own")
    before = snapshot(output_dir)
    with pytest.raises(UserError, match=rf"would write over: {re.escape(name)}\. Fix: move them"):
        prepare_output_dir(str(output_dir), True, None, True)
    assert snapshot(output_dir) == before


def test_overwrite_names_the_files_it_removes(tmp_path, caplog):
    output_dir = tmp_path / "run"
    start_run(output_dir)
    write_results(str(output_dir), "eval", {"eval_rouge1": 1.0})
    with caplog.at_level(logging.INFO, logger="seqtune"):
        prepare_output_dir(str(output_dir), True, None, True)
    assert "removed seqtune's earlier files" in caplog.text and "eval_results.json" in caplog.text


def test_one_run_per_output_folder(tmp_path):
    """A second process cannot take a folder a live run holds; the lock goes with the process."""
    import subprocess
    import sys

    output_dir = tmp_path / "run"
    output_dir.mkdir()
    hold = (
        "import sys, time; from seqtune.outputs import lock_output_dir; lock_output_dir(sys.argv[1]); "
        "print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(output_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match="another seqtune run is using --output_dir"):
            prepare_output_dir(str(output_dir), False, None, True)
    finally:
        holder.kill()
        holder.wait()
    assert prepare_output_dir(str(output_dir), False, None, True) is None  # killed: not stuck
    assert os.listdir(output_dir) == []  # and no lock file left behind


def test_overwrite_of_a_new_folder_creates_nothing(tmp_path):
    assert prepare_output_dir(str(tmp_path / "run"), True, None, True) is None
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- prepare_output_dir: --resume_from_checkpoint


def test_resume_from_a_given_complete_checkpoint(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "old-run", 7)
    output_dir = tmp_path / "run"
    assert prepare_output_dir(str(output_dir), False, checkpoint, True) == checkpoint


def test_resume_from_a_checkpoint_inside_the_output_dir_that_is_not_the_newest(tmp_path):
    output_dir = tmp_path / "run"
    older = make_checkpoint(output_dir, 3)
    make_checkpoint(output_dir, 6)
    assert prepare_output_dir(str(output_dir), False, older, True) == older


def test_resume_from_a_missing_folder_is_refused(tmp_path):
    missing = str(tmp_path / "checkpoint-404")
    with pytest.raises(UserError, match=r"--resume_from_checkpoint .*checkpoint-404: no such folder"):
        prepare_output_dir(str(tmp_path / "run"), False, missing, True)


def test_resume_from_an_incomplete_checkpoint_is_refused(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "run", 4, content=b"x" * 100)
    with open(os.path.join(checkpoint, "model.bin"), "wb") as handle:  # truncated after it was published
        handle.write(b"x")
    with pytest.raises(UserError, match=r"checkpoint-4 is incomplete \(model\.bin has 1 bytes, expected 100\)"):
        prepare_output_dir(str(tmp_path / "run"), False, checkpoint, True)


def test_resume_into_a_folder_of_foreign_files_is_refused(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "old-run", 7)
    output_dir = tmp_path / "mine"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_bytes(b"my notes")
    before = snapshot(output_dir)
    with pytest.raises(UserError, match="not a seqtune run"):
        prepare_output_dir(str(output_dir), False, checkpoint, True)
    assert snapshot(output_dir) == before


# ---------------------------------------------------------------- prepare_output_dir: unwritable


def test_an_unwritable_parent_folder_is_refused(tmp_path):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("this user can write to a read-only folder (root)")
        with pytest.raises(UserError, match=r"read-only is not writable\. Fix: choose a writable folder"):
            prepare_output_dir(str(parent / "run"), False, None, True)
    finally:
        parent.chmod(0o700)


def test_an_unwritable_parent_folder_is_refused_even_as_root(tmp_path, monkeypatch):
    """The same rule with os.access answering as it does for a user without write permission."""
    parent = tmp_path / "read-only"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(parent) else real_access(path, mode))
    with pytest.raises(UserError, match=r"cannot write to --output_dir .*read-only is not writable"):
        prepare_output_dir(str(parent / "a" / "run"), False, None, True)  # the nearest existing folder is checked
    assert os.listdir(parent) == []


# ---------------------------------------------------------------- run marker and saved arguments


def test_mark_run_started_writes_the_marker_and_the_arguments_with_tokens_redacted(tmp_path):
    output_dir = tmp_path / "run"
    argv = [
        "--model_name_or_path",
        "tiny-t5",
        "--hub_token",
        "hf_SECRET_argv",
        "--token=hf_SECRET_eq",
        "--output_dir",
        str(output_dir),
    ]
    mark_run_started(str(output_dir), argv, [ModelArgs(), RunArgs(output_dir=str(output_dir))])

    marker = read_json(output_dir / "seqtune_run.json")
    assert marker["status"] == "running"
    assert marker["command"] == [
        "--model_name_or_path",
        "tiny-t5",
        "--hub_token",
        "<redacted>",
        "--token=<redacted>",
        "--output_dir",
        str(output_dir),
    ]
    saved = read_json(output_dir / "seqtune_args.json")
    assert saved["token"] == "<redacted>" and saved["hub_token"] == "<redacted>"
    assert saved["push_to_hub_token"] is None  # nothing to hide
    assert saved["model_name_or_path"] == "tiny-t5" and saved["learning_rate"] == 1e-3
    for name in os.listdir(output_dir):
        assert "SECRET" not in (output_dir / name).read_text(encoding="utf-8"), name


def test_mark_run_finished_keeps_the_start_and_records_the_model_files(tmp_path):
    output_dir = tmp_path / "run"
    start_run(output_dir, ["--do_train"])
    started = read_json(output_dir / "seqtune_run.json")
    mark_run_finished(str(output_dir), ["model.safetensors", "config.json"])
    marker = read_json(output_dir / "seqtune_run.json")
    assert marker["status"] == "finished"
    assert marker["model_files"] == ["config.json", "model.safetensors"]
    assert marker["command"] == ["--do_train"] and marker["started_at"] == started["started_at"]
    assert marker["finished_at"] >= marker["started_at"]
    assert leftovers_in(output_dir) == []


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    start_run(output_dir)
    mark_run_finished(str(output_dir), ["config.json"])
    write_results(str(output_dir), "eval", {"eval_loss": 1.0})
    predictions = iter(["a", "b"])
    assert write_predictions(str(output_dir), predictions) == 0
    assert list(predictions) == []  # consumed all the same (the generation behind it is collective)
    assert os.listdir(output_dir) == []


# ---------------------------------------------------------------- writers


def test_write_results_writes_the_split_and_merges_all_results(tmp_path):
    write_results(str(tmp_path), "train", {"train_loss": 2.0, "train_samples": 64})
    write_results(str(tmp_path), "eval", {"eval_rouge1": 11.0, "eval_samples": 16})
    write_results(str(tmp_path), "eval", {"eval_rouge1": 12.0, "eval_samples": 16})  # a later value wins
    assert read_json(tmp_path / "train_results.json") == {"train_loss": 2.0, "train_samples": 64}
    assert read_json(tmp_path / "eval_results.json") == {"eval_rouge1": 12.0, "eval_samples": 16}
    assert read_json(tmp_path / "all_results.json") == {
        "train_loss": 2.0,
        "train_samples": 64,
        "eval_rouge1": 12.0,
        "eval_samples": 16,
    }
    assert leftovers_in(tmp_path) == []


def test_write_predictions_streams_one_line_per_example(tmp_path):
    path = tmp_path / "generated_predictions.txt"
    path.write_text("old\n")
    predictions = ["first summary", "two\nlines", "", "carriage\r\nreturn", "para\u2028graph", "last"]

    def stream():
        for index, prediction in enumerate(predictions):
            if index == 3:  # mid-stream: the previous file is still whole, the new one not yet visible
                assert path.read_text() == "old\n"
            yield prediction

    assert write_predictions(str(tmp_path), stream()) == len(predictions)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()  # the strictest reading: every line separator Python knows
    assert len(lines) == len(predictions) and text.endswith("\n")
    assert lines[0] == "first summary" and lines[-1] == "last"
    assert lines[1].split() == ["two", "lines"] and lines[2].strip() == ""
    assert lines[3].split() == ["carriage", "return"]
    assert leftovers_in(tmp_path) == []


def test_save_final_model_publishes_files_at_the_top_level(tmp_path):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "config.json").write_text('{"old": true}')
    seen = []

    def saver(folder):
        seen.append(folder)
        assert not os.path.samefile(folder, output_dir)  # written aside, not over the old model
        with open(os.path.join(folder, "config.json"), "w") as handle:
            handle.write('{"d_model": 8}')
        with open(os.path.join(folder, "model.safetensors"), "wb") as handle:
            handle.write(b"\0" * 64)

    names = save_final_model(saver, str(output_dir))
    assert names == ["config.json", "model.safetensors"]
    assert len(seen) == 1 and os.path.commonpath([seen[0], str(output_dir)]) == str(output_dir)
    assert (output_dir / "config.json").read_text() == '{"d_model": 8}'
    assert (output_dir / "model.safetensors").read_bytes() == b"\0" * 64
    assert sorted(os.listdir(output_dir)) == ["config.json", "model.safetensors"]  # staging gone


def test_save_final_model_on_a_full_disk_keeps_the_previous_files(tmp_path):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "config.json").write_text('{"old": true}')

    def saver(folder):
        with open(os.path.join(folder, "config.json"), "w") as handle:
            handle.write("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"could not write the final model .*No space left on device"):
        save_final_model(saver, str(output_dir))
    # The half-written model is removed (an empty .seqtune-staging folder may stay: the next run cleans it).
    assert [path for path, content in snapshot(output_dir).items() if content is not None] == ["config.json"]
    assert (output_dir / "config.json").read_text() == '{"old": true}'


def test_shareable_files_are_only_seqtunes_top_level_outputs(tmp_path):
    output_dir = tmp_path / "run"
    start_run(output_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (output_dir / name).write_bytes(b"model")
    mark_run_finished(str(output_dir), ["config.json", "model.safetensors", "tokenizer.json"])
    write_results(str(output_dir), "eval", {"eval_rouge1": 10.0})
    write_predictions(str(output_dir), ["a summary"])
    atomic_write_text(str(output_dir / "README.md"), "# model card\n")
    (output_dir / "plot_training_loss.png").write_bytes(b"png")
    record_files(str(output_dir), ["plot_training_loss.png"])  # as the report records its plots
    make_checkpoint(output_dir, 2)
    make_leftovers(output_dir)
    (output_dir / "runs").mkdir()
    (output_dir / "notes.txt").write_text("private notes")
    (output_dir / "vocab.txt").write_text("not a recorded model file")

    assert shareable_files(str(output_dir)) == [
        "README.md",
        "all_results.json",
        "config.json",
        "eval_results.json",
        "generated_predictions.txt",
        "model.safetensors",
        "plot_training_loss.png",
        "seqtune_args.json",
        "tokenizer.json",
    ]


def test_atomic_write_json_round_trips_and_replaces(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(str(path), {"b": 1, "a": [1, 2], "path": tmp_path})
    assert read_json(path) == {"a": [1, 2], "b": 1, "path": str(tmp_path)}
    atomic_write_json(str(path), {"c": None})
    assert read_json(path) == {"c": None}
    assert path.read_text().endswith("\n")
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_write_json_that_fails_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    atomic_write_json(str(path), {"version": 1})

    def full_disk(source, destination):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)  # the rename into place fails: nothing is published
    with pytest.raises(UserError, match=r"could not write state\.json .*No space left on device"):
        atomic_write_json(str(path), {"version": 2})
    assert read_json(path) == {"version": 1}
    assert os.listdir(tmp_path) == ["state.json"]  # the temporary file is removed


def test_resume_from_a_file_says_a_checkpoint_is_a_folder(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "old-run", 7)
    weights = os.path.join(checkpoint, "model.bin")
    assert os.path.isfile(weights)
    with pytest.raises(UserError, match=rf"is a file; a checkpoint is a folder\. Fix: .*\({re.escape(checkpoint)}\)"):
        prepare_output_dir(str(tmp_path / "run"), False, weights, True)
