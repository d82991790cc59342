"""Drop-in for the Hugging Face summarization scripts: every flag of theirs is accepted with the same
meaning (tests/data/hf_*_flags.txt list them), and a new model can be trained from scratch
(--config_name or --model_type with --tokenizer_name, no --model_name_or_path)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import pytest
import torch
from conftest import REPO, quick_args
from transformers import AutoModelForSeq2SeqLM, HfArgumentParser, Seq2SeqTrainingArguments

from seqtune.arguments import DataArguments, LoopArguments, ModelArguments, TrainerArguments, parse_arguments
from seqtune.errors import UserError
from seqtune.modeling import apply_language_settings, load_model_and_tokenizer, load_seq2seq
from seqtune.recipes.common import generation_settings

LOOP_TYPES = (ModelArguments, DataArguments, LoopArguments)
TRAINER_TYPES = (ModelArguments, DataArguments, TrainerArguments)


def listed_flags(name: str) -> list[str]:
    with open(os.path.join(REPO, "tests", "data", name), encoding="utf-8") as handle:
        lines = (line.strip() for line in handle)
        return [line for line in lines if line and not line.startswith("#")]


NO_TRAINER_FLAGS = listed_flags("hf_no_trainer_flags.txt")
TRAINER_FLAGS = listed_flags("hf_trainer_flags.txt")

# flag -> (the values after it, {attribute: expected value}); no values: a switch. The attribute
# defaults to the flag's own name with the single value (typed) as its expected value.
SAMPLES = {
    "dataset_name": (["cnn_dailymail"], None),
    "dataset_config_name": (["3.0.0"], None),
    "train_file": (["train.jsonl"], None),
    "validation_file": (["validation.jsonl"], None),
    "test_file": (["test.jsonl"], None),
    "ignore_pad_token_for_loss": (["False"], {"ignore_pad_token_for_loss": False}),
    "max_source_length": (["256"], {"max_source_length": 256}),
    "source_prefix": (["summarize: "], None),
    "preprocessing_num_workers": (["2"], {"preprocessing_num_workers": 2}),
    "overwrite_cache": ([], {"overwrite_cache": True}),
    "max_target_length": (["48"], {"max_target_length": 48, "val_max_target_length": 48}),
    "val_max_target_length": (["40"], {"val_max_target_length": 40}),
    "num_beams": (["4"], {"num_beams": 4}),
    "pad_to_max_length": ([], {"pad_to_max_length": True}),
    "model_name_or_path": (["google-t5/t5-small"], None),
    "config_name": (["google-t5/t5-small"], None),
    "tokenizer_name": (["google-t5/t5-small"], None),
    "cache_dir": (["/tmp/hf-cache"], None),
    "use_fast_tokenizer": (["False"], {"use_fast_tokenizer": False}),
    "model_revision": (["v1.0"], None),
    "token": (["hf_secret"], None),
    "resize_position_embeddings": (["True"], {"resize_position_embeddings": True}),
    "text_column": (["article"], None),
    "summary_column": (["highlights"], None),
    "use_slow_tokenizer": ([], {"use_slow_tokenizer": True, "use_fast_tokenizer": False}),
    "per_device_train_batch_size": (["4"], {"per_device_train_batch_size": 4}),
    "per_device_eval_batch_size": (["2"], {"per_device_eval_batch_size": 2}),
    "learning_rate": (["3e-4"], {"learning_rate": 3e-4}),
    "weight_decay": (["0.01"], {"weight_decay": 0.01}),
    "num_train_epochs": (["2"], {"num_train_epochs": 2}),
    "max_train_steps": (["100"], {"max_train_steps": 100}),
    "gradient_accumulation_steps": (["4"], {"gradient_accumulation_steps": 4}),
    "lr_scheduler_type": (["cosine"], {"lr_scheduler_type": "cosine"}),
    "num_warmup_steps": (["10"], {"num_warmup_steps": 10}),
    "output_dir": (["out-elsewhere"], None),
    "seed": (["7"], {"seed": 7}),
    "model_type": (["t5"], None),
    "push_to_hub": ([], {"push_to_hub": True}),
    "hub_model_id": (["me/my-model"], None),
    "hub_token": (["hf_secret"], None),
    "trust_remote_code": ([], {"trust_remote_code": True}),
    "checkpointing_steps": (["epoch"], None),
    "resume_from_checkpoint": (["out/checkpoint-4"], None),
    "with_tracking": ([], {"with_tracking": True}),
    "report_to": (["tensorboard"], None),
    "max_length": (["64"], {"max_length": 64, "val_max_target_length": 64}),  # the generation length
    "max_train_samples": (["10"], {"max_train_samples": 10}),
    "max_eval_samples": (["5"], {"max_eval_samples": 5}),
    "max_predict_samples": (["3"], {"max_predict_samples": 3}),
    "lang": (["en_XX"], None),
    "forced_bos_token": (["de_DE"], None),
}


def parsed_value(parsed, name):
    for arguments in parsed:
        if any(f.name == name for f in dataclasses.fields(arguments)):
            return getattr(arguments, name)
    raise AssertionError(f"no dataclass has {name}")


def check_flag(types, flag, tmp_path):
    values, expected = SAMPLES[flag]
    expected = expected or {flag: values[0]}
    argv = [] if flag == "output_dir" else ["--output_dir", str(tmp_path / "out")]
    parsed = parse_arguments(types, [*argv, f"--{flag}", *values])
    for name, value in expected.items():
        assert parsed_value(parsed, name) == value, (flag, name)


def test_every_listed_flag_has_a_sample():
    assert len(NO_TRAINER_FLAGS) == 40 and len(TRAINER_FLAGS) == 30
    assert not [flag for flag in {*NO_TRAINER_FLAGS, *TRAINER_FLAGS} if flag not in SAMPLES]


@pytest.mark.parametrize("flag", NO_TRAINER_FLAGS)
def test_loop_accepts_every_flag_of_the_hf_no_trainer_script(flag, tmp_path):
    check_flag(LOOP_TYPES, flag, tmp_path)


@pytest.mark.parametrize("flag", TRAINER_FLAGS)
def test_trainer_accepts_every_flag_of_the_hf_trainer_script(flag, tmp_path):
    check_flag(TRAINER_TYPES, flag, tmp_path)


def test_trainer_accepts_every_seq2seq_training_argument():
    options = {flag for action in HfArgumentParser(TRAINER_TYPES)._actions for flag in action.option_strings}
    missing = [f.name for f in dataclasses.fields(Seq2SeqTrainingArguments) if f.init and f"--{f.name}" not in options]
    assert not missing


def test_hf_no_trainer_command_line_parses_as_a_whole(tmp_path):
    """The no_trainer script's README command, with the flags it adds."""
    model_args, data_args, args = parse_arguments(
        LOOP_TYPES,
        [
            *("--model_name_or_path", "google-t5/t5-small", "--dataset_name", "cnn_dailymail"),
            *("--dataset_config", "3.0.0", "--source_prefix", "summarize: ", "--output_dir", str(tmp_path / "o")),
            *("--use_slow_tokenizer", "--max_length", "100", "--num_beams", "2", "--max_target_length", "60"),
        ],
    )
    assert model_args.use_fast_tokenizer is False
    assert generation_settings(data_args) == {"max_length": 100, "num_beams": 2}
    assert data_args.max_target_length == 60  # training targets keep their own length
    assert args.max_length == 100


def test_max_length_is_the_generation_length(tmp_path, caplog):
    out = ["--output_dir", str(tmp_path / "o")]
    _, data_args, _ = parse_arguments(LOOP_TYPES, [*out, "--max_length", "64"])
    assert generation_settings(data_args)["max_length"] == 64
    _, data_args, _ = parse_arguments(LOOP_TYPES, out)
    assert generation_settings(data_args)["max_length"] == 128  # the Hugging Face script's default
    with caplog.at_level(logging.WARNING):  # as in the Hugging Face script, --val_max_target_length wins
        _, data_args, _ = parse_arguments(LOOP_TYPES, [*out, "--max_length", "64", "--val_max_target_length", "50"])
    assert generation_settings(data_args)["max_length"] == 50
    assert "--max_length 64 is not used" in caplog.text
    with pytest.raises(UserError, match="--max_length must be at least 1"):
        parse_arguments(LOOP_TYPES, [*out, "--max_length", "0"])


def test_max_length_from_a_config_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"output_dir": str(tmp_path / "o"), "max_length": 32, "use_slow_tokenizer": True}))
    model_args, data_args, _ = parse_arguments(LOOP_TYPES, [str(path)])
    assert data_args.val_max_target_length == 32 and model_args.use_fast_tokenizer is False


def test_unknown_model_type_is_a_user_error_with_a_suggestion(tmp_path):
    with pytest.raises(UserError, match="did you mean t5"):
        parse_arguments(LOOP_TYPES, ["--output_dir", str(tmp_path / "o"), "--model_type", "t55"])


# ---- --lang and --forced_bos_token


class MultilingualTokenizer:
    """Stands in for an mBART tokenizer: language codes are tokens; src_lang/tgt_lang settable."""

    src_lang = "en_XX"
    tgt_lang = "en_XX"

    def get_vocab(self):
        return {"<s>": 0, "en_XX": 5, "de_DE": 6, "fr_XX": 7}


def test_lang_sets_the_tokenizers_languages(t5_model):
    tokenizer, model = load_seq2seq(ModelArguments(model_name_or_path=t5_model))
    multilingual = MultilingualTokenizer()
    apply_language_settings(multilingual, model, DataArguments(lang="fr_XX", forced_bos_token="de_DE"))
    assert (multilingual.src_lang, multilingual.tgt_lang) == ("fr_XX", "fr_XX")
    assert model.generation_config.forced_bos_token_id == 6  # not in model.config: transformers 5 refuses it there
    with pytest.raises(UserError, match="--lang 'xx_YY'"):
        apply_language_settings(multilingual, model, DataArguments(lang="xx_YY"))


def test_lang_without_languages_in_the_tokenizer_only_warns(t5_model, caplog):
    with caplog.at_level(logging.WARNING):
        tokenizer, _ = load_model_and_tokenizer(
            ModelArguments(model_name_or_path=t5_model), DataArguments(lang="en_XX", source_prefix="summarize: ")
        )
    assert "--lang en_XX has no effect" in caplog.text
    assert not hasattr(tokenizer, "src_lang")


def test_forced_bos_token_from_the_tokenizer(t5_model):
    tokenizer, _ = load_seq2seq(ModelArguments(model_name_or_path=t5_model))
    token = next(t for t in tokenizer.get_vocab() if t.isalpha() and len(t) > 3)
    _, model = load_model_and_tokenizer(
        ModelArguments(model_name_or_path=t5_model), DataArguments(forced_bos_token=token, source_prefix="p")
    )
    assert model.generation_config.forced_bos_token_id == tokenizer.convert_tokens_to_ids(token)
    model.generate(**tokenizer(["a b"], return_tensors="pt"), max_length=4)  # once refused: it was in model.config
    with pytest.raises(UserError, match="--forced_bos_token 'zz_ZZ' is not in the tokenizer's vocabulary"):
        load_model_and_tokenizer(ModelArguments(model_name_or_path=t5_model), DataArguments(forced_bos_token="zz_ZZ"))


# ---- training from scratch


def test_config_name_without_a_model_builds_random_weights(t5_model, caplog):
    pretrained = AutoModelForSeq2SeqLM.from_pretrained(t5_model)
    with caplog.at_level(logging.WARNING):
        tokenizer, model = load_seq2seq(ModelArguments(config_name=t5_model, tokenizer_name=t5_model))
    assert "from scratch" in caplog.text and "random weights" in caplog.text
    assert model.config.d_model == pretrained.config.d_model
    assert type(model) is type(pretrained)
    weights = dict(pretrained.named_parameters())
    assert any(not torch.equal(weights[name], value) for name, value in model.named_parameters())
    assert len(tokenizer) <= model.get_input_embeddings().weight.shape[0]


def test_model_type_alone_uses_the_default_config(t5_model, caplog):
    from transformers import T5Config

    with caplog.at_level(logging.WARNING):
        _, model = load_seq2seq(ModelArguments(model_type="t5", tokenizer_name=t5_model))
    assert model.config.model_type == "t5" and model.config.d_model == T5Config().d_model
    assert "new t5 config" in caplog.text


def test_from_scratch_needs_a_tokenizer(t5_model):
    for model_args in (ModelArguments(config_name=t5_model), ModelArguments(model_type="t5")):
        with pytest.raises(UserError, match="Fix: pass --tokenizer_name"):
            load_seq2seq(model_args)


def test_from_scratch_refuses_a_decoder_only_type(t5_model):
    with pytest.raises(UserError, match="not an encoder-decoder"):
        load_seq2seq(ModelArguments(model_type="gpt2", tokenizer_name=t5_model))


def scratch_args(t5_model, corpus_files, out, *extra):
    args = quick_args(t5_model, corpus_files, out, *extra)
    at = args.index("--model_name_or_path")
    del args[at : at + 2]
    return [*args, "--config_name", t5_model, "--tokenizer_name", t5_model]


def test_loop_trains_from_scratch(t5_model, corpus_files, tmp_path, isolated_hf_home):
    from seqtune.recipes.accelerate_loop import main

    out = tmp_path / "out"
    results = main(scratch_args(t5_model, corpus_files, out, "--max_train_steps", "2", "--max_length", "8"))
    assert isinstance(results, dict) and "eval_rouge1" in results
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    pretrained = AutoModelForSeq2SeqLM.from_pretrained(t5_model)
    weights = dict(pretrained.named_parameters())
    assert any(not torch.equal(weights[name], value) for name, value in model.named_parameters())
    assert model.config.task_specific_params["summarization"]["max_length"] == 8


def test_trainer_trains_from_scratch(t5_model, corpus_files, tmp_path, isolated_hf_home):
    from seqtune.recipes.trainer import main

    out = tmp_path / "out"
    results = main(scratch_args(t5_model, corpus_files, out, "--do_train", "--max_steps", "2"))
    assert isinstance(results, dict) and results.get("train_samples")
    assert os.path.exists(out / "config.json")
