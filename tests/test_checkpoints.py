"""The checkpoint writer and reader: only complete checkpoints are ever seen."""

from __future__ import annotations

import os

from seqtune import checkpoints as ck


def stage(output_dir, step, files=None):
    folder = ck.staging_path(str(output_dir), step)
    os.makedirs(folder, exist_ok=True)
    for name, content in (files or {"model.bin": b"x" * 100, "optimizer.pt": b"y" * 10}).items():
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(content)
    return folder


def test_publish_makes_a_complete_checkpoint_visible(tmp_path):
    assert ck.newest_checkpoint(str(tmp_path)) is None
    staged = stage(tmp_path, 5)
    assert ck.list_checkpoints(str(tmp_path)) == []  # staging is invisible
    final = ck.publish_checkpoint(staged, str(tmp_path), 5)
    assert final == str(tmp_path / "checkpoint-5") and not os.path.exists(staged)
    assert ck.is_complete(final)
    assert ck.newest_checkpoint(str(tmp_path)) == final


def test_incomplete_checkpoints_are_skipped_with_a_reason(tmp_path, caplog):
    ck.publish_checkpoint(stage(tmp_path, 2), str(tmp_path), 2)
    ck.publish_checkpoint(stage(tmp_path, 4), str(tmp_path), 4)
    (tmp_path / "checkpoint-6").mkdir()  # a kill while another tool wrote it: no manifest
    (tmp_path / "checkpoint-6" / "model.bin").write_bytes(b"partial")
    with open(tmp_path / "checkpoint-4" / "model.bin", "wb") as handle:  # truncated after the fact
        handle.write(b"x")
    with caplog.at_level("WARNING"):
        newest = ck.newest_checkpoint(str(tmp_path))
    assert newest == str(tmp_path / "checkpoint-2")
    assert "checkpoint-6" in caplog.text and "no seqtune_checkpoint.json" in caplog.text
    assert "model.bin has 1 bytes, expected 100" in caplog.text


def test_steps_sort_numerically(tmp_path):
    for step in (9, 10, 100):
        ck.publish_checkpoint(stage(tmp_path, step), str(tmp_path), step)
    assert [ck.checkpoint_step(p) for p in ck.list_checkpoints(str(tmp_path))] == [9, 10, 100]


def test_rotation_keeps_the_newest_and_the_best(tmp_path):
    for step in (1, 2, 3, 4):
        ck.publish_checkpoint(stage(tmp_path, step), str(tmp_path), step)
    ck.rotate_checkpoints(str(tmp_path), 2, keep=str(tmp_path / "checkpoint-1"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1", "checkpoint-4"]
    ck.rotate_checkpoints(str(tmp_path), 1)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]


def test_republishing_a_step_replaces_a_leftover_folder(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "junk").write_text("old")
    final = ck.publish_checkpoint(stage(tmp_path, 3), str(tmp_path), 3)
    assert sorted(os.listdir(final)) == ["model.bin", "optimizer.pt", ck.MANIFEST_NAME]


def test_clean_leftovers_removes_staging_and_trash(tmp_path):
    stage(tmp_path, 7)
    (tmp_path / f"{ck.TRASH_PREFIX}checkpoint-1-1").mkdir()
    (tmp_path / "keep.txt").write_text("user file")
    ck.clean_leftovers(str(tmp_path))
    assert os.listdir(tmp_path) == ["keep.txt"]
