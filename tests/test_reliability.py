"""Output safety: nothing of the user's is deleted or overwritten, killed runs start again,
an unwritable folder or a full disk is a clear error and the last checkpoint survives.

Runs are real: tiny models, a few steps, real files; kills are real SIGKILLs of real
subprocesses. The unwritable folder and the full disk are made without touching the
machine: a user namespace with an unprivileged uid (root ignores file modes), and a
small tmpfs mounted in a private mount namespace (`unshare`); where the kernel forbids
user namespaces those two tests are skipped, saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import LOOP_SCRIPT, TRAINER_SCRIPT, quick_args

from seqtune.checkpoints import incomplete_reason


def snapshot(folder) -> dict:
    """Every file and folder under `folder` with its content hash: equal snapshots = nothing touched."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            state[os.path.relpath(os.path.join(root, name), folder) + "/"] = None
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                state[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return state


def run_recipe(script: str, argv: list[str]):
    """Run a recipe in-process; a user error comes back as its exit code."""
    if script == TRAINER_SCRIPT:
        from seqtune.recipes.trainer import main
    else:
        from seqtune.recipes.accelerate_loop import main
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def recipe_args(script: str, model: str, files: dict, out, *extra: str) -> list[str]:
    if script == TRAINER_SCRIPT:
        return quick_args(model, files, out, "--do_train", *extra)
    loop_names = {"--max_steps": "--max_train_steps", "--save_steps": "--checkpointing_steps"}
    return quick_args(model, files, out, *[loop_names.get(flag, flag) for flag in extra])


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def user_files(out) -> None:
    """What a user may keep in a folder they later use as --output_dir."""
    os.makedirs(out / "my-data", exist_ok=True)
    (out / "notes.txt").write_text("my notes\n")
    (out / "my-data" / "train.jsonl").write_text('{"document": "a", "summary": "b"}\n')
    (out / "checkpoint-notes.md").write_text("not a checkpoint\n")
    (out / "results.csv").write_text("rouge1\n0.5\n")


SCRIPTS = [
    pytest.param(TRAINER_SCRIPT, id="trainer"),
    pytest.param(
        LOOP_SCRIPT,
        id="no_trainer",
        marks=pytest.mark.skipif(not os.path.exists(LOOP_SCRIPT), reason="no_trainer script missing"),
    ),
]


# --------------------------------------------------------------------------- no deletes, no overwrites


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_folder_of_user_files_is_refused_and_not_touched(
    script, t5_model, corpus_files, tmp_path, isolated_hf_home, capsys
):
    out = tmp_path / "mine"
    user_files(out)
    before = snapshot(out)
    code = run_recipe(script, recipe_args(script, t5_model, corpus_files, out, "--max_steps", "2"))
    assert code == 2
    error = capsys.readouterr().err
    assert "--overwrite_output_dir" in error and "notes.txt" in error
    assert snapshot(out) == before


def test_a_finished_run_without_checkpoints_is_not_overwritten(
    t5_model, corpus_files, tmp_path, isolated_hf_home, capsys
):
    out = tmp_path / "done"
    args = recipe_args(TRAINER_SCRIPT, t5_model, corpus_files, out, "--max_steps", "2", "--save_strategy", "no")
    assert isinstance(run_recipe(TRAINER_SCRIPT, args), dict)
    assert read_json(out / "seqtune_run.json")["status"] == "finished"
    before = snapshot(out)
    assert run_recipe(TRAINER_SCRIPT, args) == 2
    assert "already holds a finished seqtune run" in capsys.readouterr().err
    assert snapshot(out) == before


def test_resuming_a_checkpoint_into_a_folder_of_user_files_is_refused(
    t5_model, corpus_files, tmp_path, isolated_hf_home, capsys
):
    run = tmp_path / "run"
    assert isinstance(
        run_recipe(
            TRAINER_SCRIPT,
            recipe_args(TRAINER_SCRIPT, t5_model, corpus_files, run, "--max_steps", "2", "--save_steps", "2"),
        ),
        dict,
    )
    out = tmp_path / "mine"
    user_files(out)
    (out / "README.md").write_text("my project\n")  # a name the final model's card would take
    before = snapshot(out)
    code = run_recipe(
        TRAINER_SCRIPT,
        recipe_args(
            TRAINER_SCRIPT,
            t5_model,
            corpus_files,
            out,
            "--max_steps",
            "3",
            "--resume_from_checkpoint",
            str(run / "checkpoint-2"),
        ),
    )
    assert code == 2
    assert "not a seqtune run" in capsys.readouterr().err
    assert snapshot(out) == before


def test_overwrite_replaces_only_seqtunes_own_files(t5_model, corpus_files, tmp_path, isolated_hf_home):
    out = tmp_path / "again"
    first = recipe_args(TRAINER_SCRIPT, t5_model, corpus_files, out, "--max_steps", "4", "--save_steps", "2")
    assert isinstance(run_recipe(TRAINER_SCRIPT, first), dict)
    assert {"checkpoint-2", "checkpoint-4"} <= set(os.listdir(out))
    user_files(out)
    mine = {
        name: digest
        for name, digest in snapshot(out).items()
        if name.startswith(("notes.txt", "my-data", "checkpoint-notes.md", "results.csv"))
    }

    second = recipe_args(
        TRAINER_SCRIPT, t5_model, corpus_files, out, "--max_steps", "3", "--save_steps", "3", "--overwrite_output_dir"
    )
    assert isinstance(run_recipe(TRAINER_SCRIPT, second), dict)
    after = snapshot(out)
    assert {name: after.get(name) for name in mine} == mine  # every user file and folder, byte for byte
    checkpoints = sorted(
        name for name in os.listdir(out) if name.startswith("checkpoint-") and os.path.isdir(out / name)
    )
    assert checkpoints == ["checkpoint-3"]  # the first run's checkpoints are gone, not resumed from
    assert read_json(out / "trainer_state.json")["global_step"] == 3
    assert read_json(out / "train_results.json")["train_samples"] == 64
    assert not [name for name in os.listdir(out) if name.startswith(".seqtune-")]


# --------------------------------------------------------------------------- killed runs start again


def _wait_for(predicate, process, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_the_same_command(
    t5_model, corpus_files, tmp_path, isolated_hf_home
):
    out = tmp_path / "killed"
    args = recipe_args(
        TRAINER_SCRIPT, t5_model, corpus_files, out, "--max_steps", "3", "--save_steps", "3", "--logging_steps", "1"
    )
    process = subprocess.Popen(
        [sys.executable, TRAINER_SCRIPT, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        marked = _wait_for(lambda: (out / "seqtune_run.json").exists(), process)
        assert marked, "the run ended before writing its marker"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert read_json(out / "seqtune_run.json")["status"] == "running"
    assert not [n for n in os.listdir(out) if n.startswith("checkpoint-")]

    result = run_recipe(TRAINER_SCRIPT, args)  # the same command
    assert isinstance(result, dict)
    assert read_json(out / "seqtune_run.json")["status"] == "finished"
    assert read_json(out / "trainer_state.json")["global_step"] == 3


def test_scratch_of_a_killed_run_is_recognised_and_cleaned(t5_model, corpus_files, tmp_path, isolated_hf_home):
    """A kill while the very first files were written leaves only seqtune's scratch: not the user's files."""
    out = tmp_path / "scratch"
    (out / ".seqtune-staging" / "checkpoint-2").mkdir(parents=True)
    (out / ".seqtune-staging" / "checkpoint-2" / "model.safetensors").write_bytes(b"torn")
    (out / f".seqtune-tmp-{os.getpid() + 1}-seqtune_run.json").write_text('{"status": "run')
    (out / ".seqtune-write-test-12345").write_text("")
    args = recipe_args(TRAINER_SCRIPT, t5_model, corpus_files, out, "--max_steps", "2", "--save_steps", "2")
    assert isinstance(run_recipe(TRAINER_SCRIPT, args), dict)
    assert not [name for name in os.listdir(out) if name.startswith(".seqtune-")]
    assert incomplete_reason(str(out / "checkpoint-2")) is None


# --------------------------------------------------------------------------- unwritable folder, full disk


def _namespace_works(*flags: str) -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", *flags, "true"], capture_output=True).returncode == 0


def _child_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def test_an_unwritable_output_dir_is_a_clear_error_at_start(t5_model, corpus_files, tmp_path, isolated_hf_home):
    locked = tmp_path / "locked"
    (locked / "out").mkdir(parents=True)
    (locked / "out").chmod(0o555)
    locked.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:  # root writes anywhere: run as an unprivileged uid in a user namespace
        if not _namespace_works("--user", "--map-user=1000", "--map-group=1000"):
            pytest.skip("running as root and user namespaces are not allowed here: no way to be refused")
        prefix = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]
    # An existing folder, and one to be created: one process runs the recipe for both (imports cost seconds).
    argvs = [
        recipe_args(TRAINER_SCRIPT, t5_model, corpus_files, out, "--max_steps", "2")
        for out in (locked / "out", locked / "new" / "out")
    ]
    program = (
        "import sys, json\n"
        "from seqtune.recipes.trainer import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        main(argv)\n"
        "        print('exit 0', file=sys.stderr)\n"
        "    except SystemExit as exit_:\n"
        "        print(f'exit {exit_.code}', file=sys.stderr)\n"
    )
    try:
        result = subprocess.run(
            [*prefix, sys.executable, "-c", program, json.dumps(argvs)],
            capture_output=True,
            text=True,
            env=_child_env(),
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("seqtune: error:")]
        assert [line for line in result.stderr.splitlines() if line.startswith("exit ")] == ["exit 2", "exit 2"]
        assert len(errors) == 2 and all("cannot write to --output_dir" in line for line in errors), result.stderr
        assert str(locked / "out") in errors[0] and str(locked / "new" / "out") in errors[1]
        assert "Tokenizing" not in result.stderr  # refused before any work
        assert os.listdir(locked / "out") == [] and not (locked / "new").exists()
    finally:
        locked.chmod(0o755)
        (locked / "out").chmod(0o755)


def test_a_full_disk_at_a_save_is_a_clear_error_and_the_previous_checkpoint_survives(
    t5_model, corpus_files, tmp_path, isolated_hf_home
):
    """A tmpfs just big enough for one checkpoint: the second fails with ENOSPC, for real."""
    if not _namespace_works("--user", "--map-root-user", "--mount"):
        pytest.skip("user and mount namespaces are not allowed here: cannot mount a small tmpfs to fill up")
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    out = disk / "out"
    weights = os.path.getsize(os.path.join(t5_model, "model.safetensors"))
    size_kib = int(weights * 4.2) // 1024  # one checkpoint (weights + 2x for Adam + small files), not two
    args = recipe_args(TRAINER_SCRIPT, t5_model, corpus_files, out, "--max_steps", "6", "--save_steps", "2")
    command = " ".join(f"'{a}'" for a in [sys.executable, TRAINER_SCRIPT, *args])
    shell = f"""
set -u
mount -t tmpfs -o size={size_kib}k seqtune-test '{disk}' || exit 90
{command} > '{tmp_path}/full.log' 2>&1; echo $? > '{tmp_path}/full.rc'
cp -a '{out}' '{kept}/full'
mount -o remount,size=64m '{disk}' || exit 91
{command} > '{tmp_path}/again.log' 2>&1; echo $? > '{tmp_path}/again.rc'
cp -a '{out}' '{kept}/again'
"""
    kept.mkdir()
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell],
        capture_output=True,
        text=True,
        env=_child_env(),
        timeout=400,
    )
    if result.returncode in (90, 91):
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr

    full_log = (tmp_path / "full.log").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "2", full_log[-3000:]
    assert "seqtune: error: could not write checkpoint-4" in full_log and "No space left on device" in full_log
    assert "checkpoint-2" in full_log.split("seqtune: error:")[1]  # names the checkpoint that survived
    assert "Traceback" not in full_log
    state = kept / "full"
    assert incomplete_reason(str(state / "checkpoint-2")) is None
    assert not (state / "checkpoint-4").exists()
    assert not os.listdir(state / ".seqtune-staging") if (state / ".seqtune-staging").exists() else True
    from safetensors.torch import load_file

    load_file(str(state / "checkpoint-2" / "model.safetensors"))

    again_log = (tmp_path / "again.log").read_text()
    assert (tmp_path / "again.rc").read_text().strip() == "0", again_log[-3000:]
    assert "Resuming from" in again_log and "checkpoint-2" in again_log
    assert read_json(kept / "again" / "trainer_state.json")["global_step"] == 6
    assert read_json(kept / "again" / "seqtune_run.json")["status"] == "finished"


# --------------------------------------------------------------------------- damaged checkpoints, another model


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_damaged_newest_checkpoint_is_skipped_and_the_run_resumes_from_the_one_before(
    script, t5_model, bart_model, corpus_files, tmp_path, isolated_hf_home
):
    """A flipped byte in the newest checkpoint (same size): the same command resumes from the one before;
    the output dir reused with another model is refused before anything is written."""
    from conftest import run_script

    out = tmp_path / "run"
    limit = ("--save_total_limit", "2")
    first = run_script(
        script, recipe_args(script, t5_model, corpus_files, out, "--max_steps", "4", "--save_steps", "2", *limit)
    )
    assert first.returncode == 0, first.stderr[-3000:]
    prefix = "checkpoint-" if script == TRAINER_SCRIPT else "step_"  # the no_trainer script's names: step_N
    newest = out / f"{prefix}4"
    largest = max((entry for entry in newest.iterdir() if entry.is_file()), key=lambda entry: entry.stat().st_size)
    size = largest.stat().st_size
    with open(largest, "r+b") as handle:
        handle.seek(size // 2)
        byte = handle.read(1)
        handle.seek(size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert largest.stat().st_size == size

    again = run_script(
        script, recipe_args(script, t5_model, corpus_files, out, "--max_steps", "6", "--save_steps", "2", *limit)
    )
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stderr
    assert f"Skipping {newest}: damaged checkpoint ({largest.name} does not match its checksum)." in log
    assert f"Resuming from {out / f'{prefix}2'}," in log
    if script == TRAINER_SCRIPT:
        assert read_json(out / "trainer_state.json")["global_step"] == 6
    else:
        assert "Resumed at step 2 " in log
    assert read_json(out / "train_results.json")["epoch"] == 0.75  # 6 steps of the 8 of an epoch
    assert "missing keys" not in log  # the tied embeddings' warning at every resume is gone
    assert sorted(name for name in os.listdir(out) if name.startswith(prefix)) == [f"{prefix}4", f"{prefix}6"]
    assert incomplete_reason(str(out / f"{prefix}4")) is None  # written again, intact
    readable = 0o666 & ~_current_umask()
    assert os.stat(out / "model.safetensors").st_mode & 0o777 == readable  # colleagues can read the model
    assert os.stat(out / f"{prefix}6" / "model.safetensors").st_mode & 0o777 == readable

    before = snapshot(out)
    other = run_script(script, recipe_args(script, bart_model, corpus_files, out, "--max_steps", "8", *limit))
    assert other.returncode == 2, other.stderr[-3000:]
    assert "Traceback" not in other.stderr
    assert (
        f"seqtune: error: checkpoint {out / f'{prefix}6'} holds a different model than "
        f"--model_name_or_path {bart_model} (weight '"
    ) in other.stderr
    assert "Fix: resume with the model the run started from, or pass --overwrite_output_dir" in other.stderr
    assert snapshot(out) == before


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
