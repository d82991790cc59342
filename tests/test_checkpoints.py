"""The checkpoint writer and reader: only complete checkpoints are ever seen."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from seqtune import checkpoints as ck


def stage(output_dir, step, files=None, name=None):
    folder = ck.staging_path(str(output_dir), step, name)
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


def test_checkpoint_names_of_both_recipes():
    for name in ("checkpoint-4", "step_4", "epoch_0", "epoch_12"):
        assert ck.is_checkpoint_name(name) and ck.is_checkpoint_name(f"/out/{name}/")
    for name in ("checkpoint-", "step_", "epoch_x", "checkpoint-notes.md", "last-checkpoint", "step-4", "epoch_1a"):
        assert not ck.is_checkpoint_name(name)
    assert ck.checkpoint_step("step_7") == 7 and ck.checkpoint_step("checkpoint-7") == 7
    assert ck.checkpoint_step("notes") is None


def test_step_and_epoch_names_are_ordered_by_the_step_of_their_manifests(tmp_path):
    """The Accelerate recipe's step_N and epoch_E (the Hugging Face no_trainer script's names) and the
    Trainer's checkpoint-N: the newest by the manifest's step wins, and rotation deletes the oldest by step."""
    for name, step in (("epoch_0", 3), ("step_4", 4), ("checkpoint-5", 5), ("epoch_1", 6), ("step_2", 2)):
        final = ck.publish_checkpoint(stage(tmp_path, step, name=name), str(tmp_path), step, name=name)
        assert final == str(tmp_path / name)
        assert ck.checkpoint_step(final) == step
    assert not os.path.exists(ck.staging_root(str(tmp_path)))
    names = [os.path.basename(p) for p in ck.list_checkpoints(str(tmp_path))]
    assert names == ["step_2", "epoch_0", "step_4", "checkpoint-5", "epoch_1"]
    assert ck.newest_checkpoint(str(tmp_path)) == str(tmp_path / "epoch_1")
    ck.rotate_checkpoints(str(tmp_path), 2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-5", "epoch_1"]
    with pytest.raises(ValueError, match="not a checkpoint name"):
        ck.publish_checkpoint(stage(tmp_path, 9, name="final"), str(tmp_path), 9, name="final")


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


# --------------------------------------------------------------------------- checksums: damaged checkpoints


def flip_middle_byte(path) -> None:
    """Damage a file without changing its size (a bit rot, a bad copy): the cheap size check passes."""
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.seek(size // 2)
        byte = handle.read(1)
        handle.seek(size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_the_manifest_records_a_checksum_of_every_file(tmp_path):
    files = {"model.bin": b"x" * 100, "optimizer.pt": b"y" * 10}
    final = ck.publish_checkpoint(stage(tmp_path, 3, files), str(tmp_path), 3)
    with open(os.path.join(final, ck.MANIFEST_NAME), encoding="utf-8") as handle:
        manifest = json.load(handle)
    assert manifest["files"] == {"model.bin": 100, "optimizer.pt": 10}
    assert manifest["sha256"] == {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}


def test_a_damaged_newest_checkpoint_is_skipped_and_the_previous_one_used(tmp_path, caplog):
    for step in (2, 4):
        ck.publish_checkpoint(stage(tmp_path, step), str(tmp_path), step)
    flip_middle_byte(tmp_path / "checkpoint-4" / "optimizer.pt")
    # Listing and rotation stay cheap: sizes only, the damaged one still counts there.
    assert ck.list_checkpoints(str(tmp_path)) == [str(tmp_path / "checkpoint-2"), str(tmp_path / "checkpoint-4")]
    assert ck.is_complete(str(tmp_path / "checkpoint-4"))
    assert ck.incomplete_reason(str(tmp_path / "checkpoint-4"), verify=False) is None
    # Choosing one to use verifies it.
    assert ck.incomplete_reason(str(tmp_path / "checkpoint-4")) == "optimizer.pt does not match its checksum"
    with caplog.at_level("WARNING"):
        assert ck.newest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert (
        f"Skipping {tmp_path / 'checkpoint-4'}: damaged checkpoint (optimizer.pt does not match its checksum)."
        in caplog.text
    )
    assert ck.newest_checkpoint(str(tmp_path), verify=False) == str(tmp_path / "checkpoint-4")
    flip_middle_byte(tmp_path / "checkpoint-2" / "model.bin")
    assert ck.newest_checkpoint(str(tmp_path)) is None


def test_an_unreadable_manifest_and_bad_checksums_are_reasons(tmp_path):
    final = ck.publish_checkpoint(stage(tmp_path, 1), str(tmp_path), 1)
    manifest_path = os.path.join(final, ck.MANIFEST_NAME)
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    for broken in ("{not json", json.dumps({**manifest, "sha256": ["a list"]})):
        with open(manifest_path, "w", encoding="utf-8") as handle:
            handle.write(broken)
        assert ck.incomplete_reason(final) == f"its {ck.MANIFEST_NAME} is unreadable"
        assert ck.newest_checkpoint(str(tmp_path)) is None


def test_a_manifest_of_an_older_seqtune_without_checksums_is_accepted(tmp_path):
    final = ck.publish_checkpoint(stage(tmp_path, 5), str(tmp_path), 5)
    manifest_path = os.path.join(final, ck.MANIFEST_NAME)
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    del manifest["sha256"]
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    flip_middle_byte(os.path.join(final, "optimizer.pt"))  # nothing to tell it by: sizes only
    assert ck.incomplete_reason(final) is None
    assert ck.newest_checkpoint(str(tmp_path)) == final
    with open(os.path.join(final, "optimizer.pt"), "ab") as handle:
        handle.write(b"more")
    assert ck.incomplete_reason(final) == "optimizer.pt has 14 bytes, expected 10"


def test_resuming_explicitly_from_a_damaged_checkpoint_is_refused(tmp_path):
    from seqtune.errors import UserError
    from seqtune.outputs import prepare_output_dir

    final = ck.publish_checkpoint(stage(tmp_path, 4), str(tmp_path), 4)
    assert prepare_output_dir(str(tmp_path), False, final, True) == final
    flip_middle_byte(os.path.join(final, "model.bin"))
    with pytest.raises(UserError) as refused:
        prepare_output_dir(str(tmp_path), False, final, True)
    message = str(refused.value)
    assert final in message and "model.bin does not match its checksum" in message
    assert "Fix: resume from an earlier checkpoint" in message


# --------------------------------------------------------------------------- published files are readable


def test_published_files_get_the_mode_of_a_new_file(tmp_path):
    old_umask = os.umask(0o022)
    try:
        staged = stage(tmp_path, 8)
        os.chmod(os.path.join(staged, "model.bin"), 0o600)  # as safetensors and tempfile write
        os.chmod(staged, 0o700)
        final = ck.publish_checkpoint(staged, str(tmp_path), 8)
        assert stat.S_IMODE(os.stat(os.path.join(final, "model.bin")).st_mode) == 0o644
        assert stat.S_IMODE(os.stat(os.path.join(final, ck.MANIFEST_NAME)).st_mode) == 0o644
        assert stat.S_IMODE(os.stat(final).st_mode) == 0o755
        single = tmp_path / "staged-model.safetensors"
        single.write_bytes(b"weights")
        single.chmod(0o600)
        ck.publish(str(single), str(tmp_path / "model.safetensors"))
        assert stat.S_IMODE(os.stat(tmp_path / "model.safetensors").st_mode) == 0o644
        os.umask(0o077)  # a user who keeps their files private keeps them private
        single.write_bytes(b"weights")
        single.chmod(0o644)
        ck.publish(str(single), str(tmp_path / "private.safetensors"))
        assert stat.S_IMODE(os.stat(tmp_path / "private.safetensors").st_mode) == 0o600
    finally:
        os.umask(old_umask)


# --------------------------------------------------------------------------- the model a checkpoint holds


def tiny_t5(**changes):
    from transformers import T5Config, T5ForConditionalGeneration

    settings = dict(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, tie_word_embeddings=True)
    return T5ForConditionalGeneration(T5Config(**{**settings, **changes}))


def tiny_bart():
    from transformers import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration(
        BartConfig(
            vocab_size=40,
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            max_position_embeddings=64,
        )
    )


def test_a_checkpoint_of_the_same_model_passes(tmp_path):
    import torch

    model = tiny_t5()
    model.save_pretrained(tmp_path / "safetensors")  # tied weights are saved once
    ck.check_same_model(str(tmp_path / "safetensors"), tiny_t5())
    (tmp_path / "bin").mkdir()
    torch.save(tiny_t5().state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ck.check_same_model(str(tmp_path / "bin"), tiny_t5())
    (tmp_path / "fsdp").mkdir()  # no model file seqtune knows: nothing to compare
    ck.check_same_model(str(tmp_path / "fsdp"), tiny_t5())


@pytest.mark.parametrize(
    "saved, loaded, expected",
    [
        pytest.param(
            lambda: tiny_t5(),
            lambda: tiny_t5(d_model=24),
            "weight 'decoder.block.0.layer.0.SelfAttention.k.weight' is [16, 16] there, [16, 24] here",
            id="t5-of-another-width",
        ),
        pytest.param(
            lambda: tiny_t5(),
            lambda: tiny_bart(),
            "weight 'decoder.block.0.layer.0.SelfAttention.k.weight' is [16, 16] there, absent here",
            id="t5-checkpoint-bart-model",
        ),
        pytest.param(
            lambda: tiny_t5(),
            lambda: tiny_t5(num_layers=2),
            "weight 'decoder.block.1.layer.0.SelfAttention.k.weight' is absent there, [16, 16] here",
            id="t5-with-more-layers",
        ),
    ],
)
def test_a_checkpoint_of_another_model_is_refused(tmp_path, saved, loaded, expected):
    from seqtune.errors import UserError

    checkpoint = tmp_path / "checkpoint-6"
    saved().save_pretrained(checkpoint)
    with pytest.raises(UserError) as refused:
        ck.check_same_model(str(checkpoint), loaded(), "my/other-model")
    message = str(refused.value)
    assert message.startswith(
        f"checkpoint {checkpoint} holds a different model than --model_name_or_path my/other-model"
    )
    assert f"({expected})." in message
    assert "Fix: resume with the model the run started from, or pass --overwrite_output_dir" in message


def test_a_model_file_with_a_broken_header_is_a_user_error(tmp_path):
    from seqtune.errors import UserError

    tiny_t5().save_pretrained(tmp_path)
    with open(tmp_path / "model.safetensors", "r+b") as handle:
        handle.write(b"\xff" * 16)  # the header length and the start of the header
    with pytest.raises(UserError, match=r"model\.safetensors cannot be read .*Fix: resume from an earlier checkpoint"):
        ck.check_same_model(str(tmp_path), tiny_t5())


def test_only_untied_missing_weights_count_as_missing():
    model = tiny_t5()
    tied = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]
    assert ck.untied_missing_keys(model, tied) == []
    real = "decoder.block.0.layer.0.SelfAttention.k.weight"
    assert ck.untied_missing_keys(model, [*tied, real]) == [real]
    assert ck.untied_missing_keys(model, [*tied, "shared.weight"]) == [*tied, "shared.weight"]  # none left to fill them
    import torch

    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # its own copy now
    assert ck.untied_missing_keys(model, tied) == ["lm_head.weight"]


# --------------------------------------------------------------------------- checkpoints of other tools


def test_manifest_less_checkpoints_count_when_their_writers_last_files_are_there(tmp_path, caplog):
    """Checkpoints of transformers' Trainer and of the no_trainer script's save_state (a run switched to
    seqtune mid-way): complete once the files their writers write last are there."""
    from seqtune.errors import UserError

    trainer = tmp_path / "checkpoint-2"
    trainer.mkdir()
    for name in ("model.safetensors", "optimizer.pt"):
        (trainer / name).write_bytes(b"x")
    assert ck.foreign_writer(str(trainer)) is None  # killed before trainer_state.json: incomplete
    assert ck.list_checkpoints(str(tmp_path)) == []
    (trainer / "trainer_state.json").write_text("{}")
    assert ck.foreign_writer(str(trainer)) == ck.TRAINER_WRITER
    assert ck.list_checkpoints(str(tmp_path)) == [str(trainer)]
    with caplog.at_level("INFO", logger="seqtune.checkpoints"):
        assert ck.newest_checkpoint(str(tmp_path), announce=True) == str(trainer)
    assert (
        "checkpoint-2 has no seqtune manifest: written by transformers' Trainer; resuming from it as it is."
        in caplog.text
    )
    step = tmp_path / "step_6"
    step.mkdir()
    for name in ("model.safetensors", "optimizer.bin"):
        (step / name).write_bytes(b"x")
    assert ck.foreign_writer(str(step)) is None  # no RNG state yet: save_state did not finish
    (step / "random_states_0.pkl").write_bytes(b"x")
    assert ck.foreign_writer(str(step)) == ck.ACCELERATE_WRITER
    assert ck.newest_checkpoint(str(tmp_path)) == str(step)
    ck.check_accelerate_checkpoint(str(step), "prog")  # accepted
    with pytest.raises(UserError, match="not a checkpoint of prog"):
        ck.check_accelerate_checkpoint(str(trainer), "prog")
    (step / ck.MANIFEST_NAME).write_text("{broken")  # seqtune's manifest decides: unreadable, skipped
    assert ck.foreign_writer(str(step)) is None
    assert ck.newest_checkpoint(str(tmp_path)) == str(trainer)
