"""seqtune.modeling: loading errors a user can fix, the T5 prefix warning, position embeddings,
the summarization settings stored in the config, and which models expect a prefix."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    BartConfig,
    GPT2Config,
    GPT2LMHeadModel,
    MT5Config,
    PegasusConfig,
    PegasusForConditionalGeneration,
    T5Config,
)

from seqtune.arguments import DataArguments, ModelArguments
from seqtune.errors import UserError
from seqtune.modeling import (
    check_position_embeddings,
    is_prefix_model,
    load_model_and_tokenizer,
    load_seq2seq,
    remember_task_settings,
    task_settings,
)

PREFIX_WARNING = "no --source_prefix was given"


def modeling_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "seqtune.modeling" and r.levelno == logging.WARNING]


# --------------------------------------------------------------------------- load_seq2seq


def test_load_seq2seq_without_a_model():
    with pytest.raises(UserError, match="no model given. Fix: pass --model_name_or_path"):
        load_seq2seq(ModelArguments())


@pytest.mark.parametrize(
    "missing", ["./no-such-model", "/no/such/model/folder", "~/no-such-seqtune-model", "runs/2024/model"]
)
def test_load_seq2seq_path_that_does_not_exist(missing):
    with pytest.raises(UserError, match=r"--model_name_or_path .*: no such folder\. Fix: check the path"):
        load_seq2seq(ModelArguments(model_name_or_path=missing))


def test_load_seq2seq_missing_config_or_tokenizer_folder(t5_model, tmp_path):
    with pytest.raises(UserError, match="--config_name .*: no such folder"):
        load_seq2seq(ModelArguments(model_name_or_path=t5_model, config_name=str(tmp_path / "no-config")))
    with pytest.raises(UserError, match="--tokenizer_name .*: no such folder"):
        load_seq2seq(ModelArguments(model_name_or_path=t5_model, tokenizer_name=str(tmp_path / "no-tokenizer")))


def test_load_seq2seq_hub_name_offline_not_cached():
    name = "seqtune-tests/no-such-model"
    with pytest.raises(UserError) as excinfo:
        load_seq2seq(ModelArguments(model_name_or_path=name))
    message = str(excinfo.value)
    assert message.startswith(f"could not load the model config from {name!r}: ")
    assert "offline (HF_HUB_OFFLINE=1) the model must already be in the Hugging Face cache" in message


def test_load_seq2seq_refuses_decoder_only_model(tmp_path):
    folder = tmp_path / "tiny-gpt2"
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=40, bos_token_id=1, eos_token_id=1)
    GPT2LMHeadModel(config).save_pretrained(folder)
    with pytest.raises(UserError) as excinfo:
        load_seq2seq(ModelArguments(model_name_or_path=str(folder)))
    assert str(excinfo.value) == (
        f"{str(folder)!r} is a gpt2 model, not an encoder-decoder (sequence-to-sequence) model. "
        "Fix: use a model such as T5, BART, Pegasus or mT5."
    )


def test_load_seq2seq_loads_a_local_folder(t5_model):
    tokenizer, model = load_seq2seq(ModelArguments(model_name_or_path=t5_model))
    assert model.config.is_encoder_decoder and model.config.model_type == "t5"
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    assert tokenizer("on monday the council").input_ids[-1] == tokenizer.eos_token_id


# --------------------------------------------------------------------------- load_model_and_tokenizer


def test_t5_without_source_prefix_warns(t5_model, caplog):
    with caplog.at_level(logging.WARNING, logger="seqtune.modeling"):
        _, model = load_model_and_tokenizer(ModelArguments(model_name_or_path=t5_model), DataArguments())
    assert model.config.model_type == "t5"
    warnings = modeling_warnings(caplog)
    assert len(warnings) == 1 and PREFIX_WARNING in warnings[0]
    assert t5_model in warnings[0] and '--source_prefix "summarize: "' in warnings[0]


def test_t5_with_source_prefix_does_not_warn(t5_model, caplog):
    with caplog.at_level(logging.WARNING, logger="seqtune.modeling"):
        load_model_and_tokenizer(ModelArguments(model_name_or_path=t5_model), DataArguments(source_prefix=""))
    assert modeling_warnings(caplog) == []  # an explicit empty prefix is a choice, not an omission


def test_bart_without_source_prefix_does_not_warn(bart_model, caplog):
    assert "t5" not in bart_model.lower()  # else the name alone would make it a prefix model
    with caplog.at_level(logging.WARNING, logger="seqtune.modeling"):
        _, model = load_model_and_tokenizer(ModelArguments(model_name_or_path=bart_model), DataArguments())
    assert model.config.model_type == "bart"
    assert modeling_warnings(caplog) == []


def test_load_model_and_tokenizer_checks_position_embeddings(bart_model):
    with pytest.raises(UserError, match="--max_source_length 2048 exceeds the model's 1024 position embeddings"):
        load_model_and_tokenizer(
            ModelArguments(model_name_or_path=bart_model, resize_position_embeddings=False),
            DataArguments(max_source_length=2048),
        )


# --------------------------------------------------------------------------- check_position_embeddings


@pytest.fixture()
def bart(bart_model):
    return AutoModelForSeq2SeqLM.from_pretrained(bart_model)


def tiny_pegasus(max_positions: int = 32):
    """Pegasus can resize its (sinusoidal) position embeddings; BART cannot."""
    torch.manual_seed(0)
    config = PegasusConfig(
        vocab_size=40,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return PegasusForConditionalGeneration(config)


@pytest.mark.parametrize("resize", [None, False, True])
def test_position_embeddings_within_limit_are_left_alone(bart, resize):
    weight = bart.model.encoder.embed_positions.weight
    check_position_embeddings(
        bart, ModelArguments(resize_position_embeddings=resize), DataArguments(max_source_length=1024)
    )
    assert bart.model.encoder.embed_positions.weight is weight and bart.config.max_position_embeddings == 1024


def test_position_embeddings_beyond_limit_refused_without_resize(bart):
    with pytest.raises(UserError) as excinfo:
        check_position_embeddings(
            bart, ModelArguments(resize_position_embeddings=False), DataArguments(max_source_length=1025)
        )
    assert str(excinfo.value) == (
        "--max_source_length 1025 exceeds the model's 1024 position embeddings. "
        "Fix: pass --max_source_length 1024 or less, or --resize_position_embeddings."
    )
    assert bart.config.max_position_embeddings == 1024


def test_position_embeddings_resized_when_asked(caplog):
    model = tiny_pegasus(max_positions=32)
    inputs = torch.randint(2, 40, (1, 64))
    with pytest.raises(IndexError):  # the model as it was cannot take 64 tokens
        model(input_ids=inputs, labels=inputs[:, :4])
    with caplog.at_level(logging.WARNING, logger="seqtune.modeling"):
        check_position_embeddings(
            model, ModelArguments(resize_position_embeddings=True), DataArguments(max_source_length=64)
        )
    assert model.config.max_position_embeddings == 64
    assert model.model.encoder.embed_positions.weight.shape[0] == 64
    assert torch.isfinite(model(input_ids=inputs, labels=inputs[:, :4]).loss)
    assert modeling_warnings(caplog) == ["Resized position embeddings from 32 to 64."]


def test_resize_asked_for_a_model_that_cannot(bart):
    with pytest.raises(UserError) as excinfo:
        check_position_embeddings(
            bart, ModelArguments(resize_position_embeddings=True), DataArguments(max_source_length=2048)
        )
    assert str(excinfo.value) == (
        "--max_source_length 2048 exceeds the model's 1024 position embeddings and "
        "BartForConditionalGeneration cannot resize them. Fix: pass --max_source_length 1024 or less."
    )


def test_model_without_position_limit_takes_any_length(t5_model):
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_model)  # relative positions: no max_position_embeddings
    check_position_embeddings(
        model, ModelArguments(resize_position_embeddings=False), DataArguments(max_source_length=100_000)
    )


# --------------------------------------------------------------------------- summarization settings


def test_task_settings_round_trip_through_save(t5_model, tmp_path):
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_model)
    assert task_settings(model.config) == {}
    data_args = DataArguments(
        source_prefix="summarize: ", max_source_length=96, max_target_length=24, val_max_target_length=30, num_beams=3
    )
    remember_task_settings(model, data_args)
    model.save_pretrained(tmp_path / "saved")
    settings = task_settings(AutoConfig.from_pretrained(tmp_path / "saved"))
    assert settings == {"prefix": "summarize: ", "max_source_length": 96, "max_length": 30, "num_beams": 3}


def test_task_settings_defaults(t5_model):
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_model)
    remember_task_settings(model, DataArguments(max_target_length=24))
    assert task_settings(model.config) == {"prefix": "", "max_source_length": 1024, "max_length": 24}


def test_task_settings_keep_other_tasks_and_hub_values(tmp_path):
    """As on google-t5/t5-small: other tasks stay; min_length stays unless longer than the new max_length."""
    config = T5Config(
        d_model=16,
        d_ff=32,
        d_kv=8,
        num_layers=1,
        num_heads=2,
        vocab_size=40,
        task_specific_params={
            "summarization": {
                "prefix": "summarize: ",
                "min_length": 30,
                "max_length": 200,
                "num_beams": 4,
                "early_stopping": True,
                "length_penalty": 2.0,
            },
            "translation_en_to_de": {"prefix": "translate English to German: "},
        },
    )
    model = AutoModelForSeq2SeqLM.from_config(config)
    remember_task_settings(model, DataArguments(source_prefix="tl;dr: ", max_target_length=24))
    model.config.save_pretrained(tmp_path)
    params = AutoConfig.from_pretrained(tmp_path).task_specific_params
    assert params["translation_en_to_de"] == {"prefix": "translate English to German: "}
    assert params["summarization"] == {
        "prefix": "tl;dr: ",
        "max_length": 24,
        "max_source_length": 1024,
        "num_beams": 4,
        "early_stopping": True,
        "length_penalty": 2.0,
    }


def test_task_settings_keep_min_length_that_fits():
    config = T5Config(
        d_model=16,
        d_ff=32,
        d_kv=8,
        num_layers=1,
        num_heads=2,
        vocab_size=40,
        task_specific_params={"summarization": {"min_length": 10}},
    )
    model = AutoModelForSeq2SeqLM.from_config(config)
    remember_task_settings(model, DataArguments(max_target_length=24))
    assert task_settings(model.config)["min_length"] == 10


def test_task_settings_returns_a_copy():
    config = T5Config(task_specific_params={"summarization": {"prefix": "summarize: "}})
    task_settings(config)["prefix"] = "changed"
    assert task_settings(config) == {"prefix": "summarize: "}


# --------------------------------------------------------------------------- is_prefix_model


@pytest.mark.parametrize(
    "config, name, expected",
    [
        (T5Config(), None, True),
        (T5Config(), "my-summarizer", True),
        (MT5Config(), "google/mt5-small", True),
        (BartConfig(), "facebook/bart-large-cnn", False),
        (BartConfig(), None, False),
        (BartConfig(), "org/Flan-T5-distilled-bart", True),  # the name alone counts (case-insensitive)
    ],
)
def test_is_prefix_model(config, name, expected):
    assert is_prefix_model(config, name) is expected


# --------------------------------------------------------------------------- a folder that is not a model


def test_empty_folder_as_model_says_it_holds_no_model_not_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").mkdir()
    for name in ("my-model", str(tmp_path / "my-model")):  # a bare name that is a folder here, and a path
        with pytest.raises(UserError) as excinfo:
            load_seq2seq(ModelArguments(model_name_or_path=name))
        message = str(excinfo.value)
        assert message.startswith(f"--model_name_or_path {name} is an empty folder: no model to load")
        assert "config.json" in message and "save_pretrained" in message and "google-t5/t5-small" in message
        assert "network" not in message and "--token" not in message


def test_run_folder_without_a_final_model_points_at_its_newest_checkpoint(t5_model, tmp_path):
    import shutil

    run = tmp_path / "run"
    for step in (5, 20):
        shutil.copytree(t5_model, run / f"checkpoint-{step}")
    (run / "log_history.jsonl").write_text("")
    with pytest.raises(UserError) as excinfo:
        load_seq2seq(ModelArguments(model_name_or_path=str(run)))
    message = str(excinfo.value)
    assert message.startswith(f"--model_name_or_path {run} holds no model (config.json is missing). Fix: ")
    assert f"pass its newest checkpoint ({run / 'checkpoint-20'})" in message
    tokenizer, model = load_seq2seq(ModelArguments(model_name_or_path=str(run / "checkpoint-20")))  # the fix works
    assert model.config.is_encoder_decoder


def test_folder_with_a_config_but_no_weights_gets_a_folder_fix(t5_model, tmp_path):
    import shutil

    folder = tmp_path / "half-copied"
    shutil.copytree(t5_model, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError) as excinfo:
        load_seq2seq(ModelArguments(model_name_or_path=str(folder)))
    message = str(excinfo.value)
    assert message.startswith(f"could not load the model from {str(folder)!r}: ")
    assert "Fix: the folder must hold what save_pretrained writes" in message and "network" not in message
    assert ".. Fix" not in message  # the library's own full stop is not doubled
