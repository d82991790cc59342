"""Model and tokenizer from a hub name or a local path, with the checks seq2seq models need."""

from __future__ import annotations

import logging
import os

from .arguments import DataArguments, ModelArguments
from .errors import UserError

logger = logging.getLogger(__name__)

# Model types pre-trained with a task prefix ("summarize: ") that they expect in fine-tuning.
PREFIX_MODEL_TYPES = {"t5", "mt5", "umt5", "longt5", "switch_transformers"}


def _looks_like_path(name: str) -> bool:
    return name.startswith((os.sep, ".", "~")) or os.path.isabs(name) or name.count("/") > 1


SAVED_MODEL_FIX = (
    "pass a folder written by save_pretrained (a finished run's --output_dir, or one of its checkpoint-N "
    "folders), or a hub model id such as google-t5/t5-small"
)


def _explain_load_error(kind: str, name: str, error: Exception) -> UserError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    hint = (
        "offline (HF_HUB_OFFLINE=1) the model must already be in the Hugging Face cache, or pass a local folder"
        if offline
        else "check the name (e.g. google-t5/t5-small) or the folder, your network, and --token for private models"
    )
    if os.path.isdir(os.path.expanduser(name)):  # a local folder: neither the network nor a token can help
        hint = (
            f"the folder must hold what save_pretrained writes (config.json, the weights, the tokenizer files): "
            f"{SAVED_MODEL_FIX}"
        )
    if "trust_remote_code" in str(error):
        hint = (
            "the model is defined by code in its repository; read that code, and pass --trust_remote_code "
            "only if you trust it (it runs on your machine)"
        )
    return UserError(f"could not load the {kind} from {name!r}: {str(error).rstrip('. ')}. Fix: {hint}.")


def _check_model_folder(flag: str, folder: str) -> None:
    """A local folder passed as a model must hold a config.json (an empty or unrelated folder is not a model)."""
    path = os.path.expanduser(folder)
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, "config.json")):
        return
    checkpoints = sorted(
        (entry for entry in os.listdir(path) if entry.startswith("checkpoint-") and entry[11:].isdigit()),
        key=lambda entry: int(entry[11:]),
    )
    checkpoints = [c for c in checkpoints if os.path.exists(os.path.join(path, c, "config.json"))]
    what = "is an empty folder: no model to load" if not os.listdir(path) else "holds no model"
    fix = (
        f"pass its newest checkpoint ({os.path.join(folder, checkpoints[-1])}), or {SAVED_MODEL_FIX}"
        if checkpoints
        else SAVED_MODEL_FIX
    )
    raise UserError(f"--{flag} {folder} {what} (config.json is missing). Fix: {fix}.")


def is_prefix_model(config, name: str | None) -> bool:
    return getattr(config, "model_type", None) in PREFIX_MODEL_TYPES or (name is not None and "t5" in name.lower())


def _hub_options(model_args: ModelArguments) -> dict:
    """Where and how config, tokenizer and weights are fetched (the same for all three)."""
    return {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }


def load_tokenizer(name: str, model_args: ModelArguments):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            name,
            use_fast=model_args.use_fast_tokenizer,
            **_hub_options(model_args),
        )
    except (OSError, ValueError) as error:
        raise _explain_load_error("tokenizer", name, error) from None


def load_model_and_tokenizer(model_args: ModelArguments, data_args: DataArguments):
    """Load (tokenizer, model) and apply the checks of the Hugging Face summarization script."""
    tokenizer, model = load_seq2seq(model_args)
    name = model_args.model_name_or_path
    check_position_embeddings(model, model_args, data_args)
    if is_prefix_model(model.config, name) and data_args.source_prefix is None:
        logger.warning(
            '%s is a T5-style model but no --source_prefix was given: pass --source_prefix "summarize: " '
            "as the model was pre-trained with it.",
            name,
        )
    return tokenizer, model


def load_seq2seq(model_args: ModelArguments):
    """Load (tokenizer, model) of an encoder-decoder model from a hub name or a folder."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    name = model_args.model_name_or_path
    if not name:
        raise UserError(
            "no model given. Fix: pass --model_name_or_path (e.g. google-t5/t5-small or a local folder), "
            "or run `seqtune demo` for the built-in tiny model."
        )
    for flag, value in (
        ("model_name_or_path", name),
        ("config_name", model_args.config_name),
        ("tokenizer_name", model_args.tokenizer_name),
    ):
        if value and _looks_like_path(value) and not os.path.exists(os.path.expanduser(value)):
            raise UserError(f"--{flag} {value}: no such folder. Fix: check the path, or pass a hub model id.")

    config_name = model_args.config_name or name
    _check_model_folder("config_name" if model_args.config_name else "model_name_or_path", config_name)
    try:
        config = AutoConfig.from_pretrained(
            config_name,
            **_hub_options(model_args),
        )
    except (OSError, ValueError) as error:
        raise _explain_load_error("model config", config_name, error) from None
    if not getattr(config, "is_encoder_decoder", False):
        raise UserError(
            f"{name!r} is a {config.model_type} model, not an encoder-decoder (sequence-to-sequence) model. "
            f"Fix: use a model such as T5, BART, Pegasus or mT5."
        )

    tokenizer = load_tokenizer(model_args.tokenizer_name or name, model_args)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(
            name,
            config=config,
            **_hub_options(model_args),
        )
    except (OSError, ValueError) as error:
        raise _explain_load_error("model", name, error) from None

    # A tokenizer with more tokens than the model's embeddings (added tokens) needs room.
    embedding_size = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embedding_size:
        model.resize_token_embeddings(len(tokenizer))

    if model.config.decoder_start_token_id is None:
        raise UserError(
            f"the model {name!r} has no decoder_start_token_id in its config. Fix: set it in config.json "
            f"(usually the pad or bos token id)."
        )
    return tokenizer, model


def remember_summarization_settings(model, data_args: DataArguments) -> None:
    """Store how the model is fine-tuned in its config, so every checkpoint and the final model
    carry it: the source prefix, the input length and the generation length (and beams).

    They go where Hugging Face models keep them (config.task_specific_params["summarization"],
    as google-t5/t5-small does); `seqtune summarize` applies them.
    """
    params = dict(getattr(model.config, "task_specific_params", None) or {})
    settings = dict(params.get("summarization") or {})
    settings["prefix"] = data_args.source_prefix or ""
    settings["max_source_length"] = data_args.max_source_length
    settings["max_length"] = data_args.val_max_target_length
    if data_args.num_beams is not None:
        settings["num_beams"] = data_args.num_beams
    if (settings.get("min_length") or 0) > settings["max_length"]:
        del settings["min_length"]
    params["summarization"] = settings
    model.config.task_specific_params = params


def summarization_settings(config) -> dict:
    """The settings `remember_summarization_settings` stored (or a hub model's own), else {}."""
    params = getattr(config, "task_specific_params", None) or {}
    return dict(params.get("summarization") or {})


def check_position_embeddings(model, model_args: ModelArguments, data_args: DataArguments) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None or data_args.max_source_length <= limit:
        return
    if model_args.resize_position_embeddings is False:
        raise UserError(
            f"--max_source_length {data_args.max_source_length} exceeds the model's {limit} position embeddings. "
            f"Fix: pass --max_source_length {limit} or less, or --resize_position_embeddings."
        )
    try:
        model.resize_position_embeddings(data_args.max_source_length)
    except (NotImplementedError, AttributeError):
        raise UserError(
            f"--max_source_length {data_args.max_source_length} exceeds the model's {limit} position embeddings and "
            f"{type(model).__name__} cannot resize them. Fix: pass --max_source_length {limit} or less."
        ) from None
    logger.warning("Resized position embeddings from %d to %d.", limit, data_args.max_source_length)
