"""Kill torture, short version: SIGKILL real training runs at chosen kinds of moments, resume, check.

The long version (20 random kills, both scripts, final weights compared with an
uninterrupted run) is `make torture`; see scripts/torture.py for what is checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
from conftest import LOOP_SCRIPT, REPO, TRAINER_SCRIPT

_spec = importlib.util.spec_from_file_location("torture", os.path.join(REPO, "scripts", "torture.py"))
torture = importlib.util.module_from_spec(_spec)
sys.modules["torture"] = torture  # its dataclasses look their module up
_spec.loader.exec_module(torture)


@pytest.mark.timeout(600)
def test_trainer_script_survives_kills_during_checkpoint_writes_rotation_and_final_save(
    tmp_path, t5_model, corpus_files
):
    report = torture.torture(
        TRAINER_SCRIPT,
        kills=3,
        workdir=str(tmp_path),
        seed=1,
        modes=["checkpoint", "rotation", "final"],
        model=t5_model,
        files=corpus_files,
        verbose=False,
    )
    assert report.ok, report.summary()
    assert report.kills == 3, report.summary()
    assert report.final_step == report.expected_steps
    # Killed while saving the final model: the last attempt resumed from the last checkpoint and
    # took no step beyond --max_steps (every other resume point is checked inside the torture).
    assert torture._resumed_from(report.attempts[-1].log) == report.expected_steps, report.summary()
    with open(os.path.join(tmp_path, "run", "trainer_state.json"), encoding="utf-8") as handle:
        assert json.load(handle)["global_step"] == report.expected_steps


@pytest.mark.timeout(600)
@pytest.mark.skipif(not os.path.exists(LOOP_SCRIPT), reason="the no_trainer script is not there yet")
def test_no_trainer_script_survives_kills_and_ends_with_the_weights_of_an_uninterrupted_run(
    tmp_path, t5_model, corpus_files
):
    report = torture.torture(
        LOOP_SCRIPT,
        kills=3,
        workdir=str(tmp_path),
        seed=2,
        modes=["checkpoint", "step", "final"],
        model=t5_model,
        files=corpus_files,
        same_weights=True,
        verbose=False,
    )
    assert report.ok, report.summary()
    assert report.kills == 3, report.summary()
    assert report.weights_equal is True, report.summary()


def test_the_checker_sees_a_torn_checkpoint(tmp_path):
    """The torture's own checks must be able to fail: a visible checkpoint with a truncated file."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    save_file({"w": torch.ones(64, 64)}, str(folder / "model.safetensors"))
    size = os.path.getsize(folder / "model.safetensors")
    (folder / torture.MANIFEST_NAME).write_text(json.dumps({"step": 4, "files": {"model.safetensors": size}}))
    assert torture.checkpoint_problems(str(folder), 4) == []
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.truncate(size // 2)
    problems = torture.checkpoint_problems(str(folder), 4)
    assert any("bytes" in p for p in problems) and any("does not load" in p for p in problems)
    (folder / torture.MANIFEST_NAME).unlink()
    assert torture.checkpoint_problems(str(folder), 4)
