"""Model and tokenizer from a hub name or a local path, with the checks seq2seq models need."""

from __future__ import annotations

import logging
import os

from .arguments import DataArguments, ModelArguments, TranslationDataArguments
from .errors import UserError
from .tasks import task_of

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
        if "TokenizersBackend" in str(error):  # a transformers 5 folder read by transformers 4 (the TF recipe)
            return _tokenizer_from_files(name, model_args)
        raise _explain_load_error("tokenizer", name, error) from None


# The special tokens a tokenizer_config.json names (transformers 5 writes them as plain strings).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _tokenizer_from_files(name: str, model_args: ModelArguments):
    """A fast tokenizer from tokenizer.json and the special tokens of tokenizer_config.json: how transformers 4
    reads a tokenizer saved by transformers 5 (whose class, TokenizersBackend, it does not know)."""
    import json

    from transformers import PreTrainedTokenizerFast
    from transformers.utils import cached_file

    options = {key: value for key, value in _hub_options(model_args).items() if key != "trust_remote_code"}
    try:
        with open(cached_file(name, "tokenizer_config.json", **options), encoding="utf-8") as handle:
            settings = json.load(handle)
        tokenizer_file = cached_file(name, "tokenizer.json", **options)
    except (OSError, ValueError) as error:
        raise _explain_load_error("tokenizer", name, error) from None
    specials = {key: settings[key] for key in SPECIAL_TOKEN_KEYS if isinstance(settings.get(key), str)}
    extra = settings.get("extra_special_tokens") or settings.get("additional_special_tokens")
    if isinstance(extra, list) and extra:
        specials["additional_special_tokens"] = extra
    return PreTrainedTokenizerFast(
        tokenizer_file=tokenizer_file, model_max_length=settings.get("model_max_length", int(1e30)), **specials
    )


def load_model_and_tokenizer(model_args: ModelArguments, data_args: DataArguments, create_model=None):
    """Load (tokenizer, model) and apply the checks of the Hugging Face summarization script.

    `create_model(model_args, config, label, tokenizer)`: how the model is made (default: the PyTorch one;
    the TensorFlow recipe passes its own, seqtune.tf_modeling.create_tf_model)."""
    tokenizer, model = load_seq2seq(model_args, create_model)
    name = model_args.model_name_or_path or model_args.config_name or model_args.model_type
    check_position_embeddings(model, model_args, data_args)
    apply_language_settings(tokenizer, model, data_args)
    check_decoder_start(model, name)
    if is_prefix_model(model.config, name) and data_args.source_prefix is None:
        logger.warning(
            '%s is a T5-style model but no --source_prefix was given: pass --source_prefix "%s" '
            "as the model was pre-trained with it.",
            name,
            task_of(data_args).prefix_example,
        )
    return tokenizer, model


def _language_token_id(tokenizer, code: str) -> int | None:
    """The id of a language code's token, as the tokenizer names it (M2M100: en is __en__), or None."""
    if hasattr(tokenizer, "get_lang_id"):  # M2M100
        try:
            return tokenizer.get_lang_id(code)
        except (KeyError, ValueError):
            return None
    return tokenizer.get_vocab().get(code)


# Tokenizers whose models start the output with the target language's token: for translation
# it is forced at generation unless --forced_bos_token says otherwise.
FORCED_TARGET_LANGUAGE_TOKENIZERS = ("MBart50", "Nllb", "M2M100")


def apply_language_settings(tokenizer, model, data_args: DataArguments) -> None:
    """Languages (--lang, or --source_lang/--target_lang) and --forced_bos_token for multilingual tokenizers
    (mBART, mBART-50, NLLB, M2M100), as the Hugging Face scripts apply them; unknown codes are refused."""
    translation = isinstance(data_args, TranslationDataArguments)
    flags = ("source_lang", "target_lang") if translation else ("lang", "lang")
    kind = type(tokenizer).__name__
    multilingual = hasattr(tokenizer, "src_lang")  # the language codes are tokens
    languages = dict(zip(flags, data_args.languages))
    if multilingual:
        for flag, code in languages.items():
            if code is None:
                if translation:
                    raise UserError(
                        f"{kind} is a multilingual tokenizer: it needs --source_lang and --target_lang as it writes "
                        f"them (e.g. en_XX and ro_RO for mBART, eng_Latn and ron_Latn for NLLB)."
                    )
                if kind.startswith("MBart"):
                    logger.warning(
                        "%s is a multilingual tokenizer: pass --lang with the language of your texts (e.g. en_XX).",
                        kind,
                    )
                continue
            if _language_token_id(tokenizer, code) is None:
                raise UserError(
                    f"--{flag} {code!r} is not a language of the {kind} tokenizer (no such token in its vocabulary). "
                    f"Fix: pass a language code as the tokenizer writes it (e.g. en_XX for mBART, eng_Latn for "
                    f"NLLB, en for M2M100)."
                )
        source, target = data_args.languages
        if source is not None:
            tokenizer.src_lang = source
        if target is not None and hasattr(tokenizer, "tgt_lang"):
            tokenizer.tgt_lang = target
        if target is not None and model.config.decoder_start_token_id is None and kind.startswith("MBart"):
            # mBART's decoder starts from the target language's token (the Hugging Face scripts set it too).
            model.config.decoder_start_token_id = _language_token_id(tokenizer, target)
            model.generation_config.decoder_start_token_id = model.config.decoder_start_token_id
    else:
        for flag, code in languages.items():
            if code is not None and not translation:  # translation languages also pick the data's columns
                logger.warning(
                    "--%s %s has no effect: the %s tokenizer has no source or target language "
                    "(only multilingual ones such as mBART's have).",
                    flag,
                    code,
                    kind,
                )
                break
    token = data_args.forced_bos_token
    if token is None and translation and multilingual and kind.startswith(FORCED_TARGET_LANGUAGE_TOKENIZERS):
        token = data_args.target_lang
        logger.info("Forcing the target language %s as the first generated token (--forced_bos_token).", token)
    if token is not None:
        token_id = _language_token_id(tokenizer, token)
        if token_id is None:
            raise UserError(
                f"--forced_bos_token {token!r} is not in the tokenizer's vocabulary, so it cannot be forced as the "
                f"first generated token. Fix: pass the target language's token as the tokenizer writes it "
                f"(e.g. de_DE for mBART-50), or drop --forced_bos_token."
            )
        # In the generation config only: transformers 5 refuses generation settings in the model's config.
        model.generation_config.forced_bos_token_id = token_id


def _from_scratch_config(model_args: ModelArguments):
    """The default config of --model_type (training from scratch without --config_name)."""
    from transformers import CONFIG_MAPPING

    logger.warning(
        "Training from scratch with a new %s config (its default settings): no --model_name_or_path "
        "or --config_name was given.",
        model_args.model_type,
    )
    return CONFIG_MAPPING[model_args.model_type]()


def _match_special_tokens(config, tokenizer, replace: bool) -> None:
    """A new model's special token ids from its tokenizer: those the config lacks, or all of them for
    --model_type's default config (which knows nothing of the tokenizer). The decoder starts with the
    pad token in T5-family models, else with the bos token."""
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None and (replace or getattr(config, key, None) is None):
            setattr(config, key, value)
    if getattr(config, "decoder_start_token_id", None) is None:
        start = tokenizer.pad_token_id if config.model_type in PREFIX_MODEL_TYPES else tokenizer.bos_token_id
        if start is not None:
            config.decoder_start_token_id = start
            logger.info("The new model's decoder starts with token id %d (decoder_start_token_id).", start)


def _check_model_arguments(model_args: ModelArguments) -> None:
    """A model to load or a config to start from, paths that exist, and a tokenizer for a new model."""
    name = model_args.model_name_or_path
    model_type = getattr(model_args, "model_type", None)
    if not name and not model_args.config_name and not model_type:
        raise UserError(
            "no model given. Fix: pass --model_name_or_path (e.g. google-t5/t5-small or a local folder), "
            "or --config_name or --model_type with --tokenizer_name to train a new model from scratch, "
            "or run `seqtune demo` for the built-in tiny model."
        )
    for flag, value in (
        ("model_name_or_path", name),
        ("config_name", model_args.config_name),
        ("tokenizer_name", model_args.tokenizer_name),
    ):
        if value and _looks_like_path(value) and not os.path.exists(os.path.expanduser(value)):
            raise UserError(f"--{flag} {value}: no such folder. Fix: check the path, or pass a hub model id.")
    if not name and not model_args.tokenizer_name:
        given = "--config_name" if model_args.config_name else "--model_type"
        raise UserError(
            f"training a new model from scratch ({given} without --model_name_or_path) needs a tokenizer, and "
            f"a new one cannot be built here. Fix: pass --tokenizer_name (a hub tokenizer such as "
            f"google-t5/t5-small, or a folder with a saved tokenizer), or --model_name_or_path to fine-tune "
            f"a pre-trained model."
        )


def _load_or_create_model(model_args: ModelArguments, config, label: str):
    """The pre-trained model of --model_name_or_path, or a new one with random weights from `config`."""
    from transformers import AutoModelForSeq2SeqLM

    name, model_type, config_name = (
        model_args.model_name_or_path,
        getattr(model_args, "model_type", None),
        model_args.config_name,
    )
    if name:
        try:
            model = AutoModelForSeq2SeqLM.from_pretrained(
                name,
                config=config,
                **_hub_options(model_args),
            )
        except (OSError, ValueError) as error:
            raise _explain_load_error("model", name, error) from None
    else:
        logger.warning(
            "Training a new %s model from scratch: random weights, config from %s (no --model_name_or_path).",
            config.model_type,
            config_name or f"--model_type {model_type}",
        )
        try:
            model = AutoModelForSeq2SeqLM.from_config(config, trust_remote_code=model_args.trust_remote_code)
        except (OSError, ValueError) as error:
            raise _explain_load_error("model", label, error) from None
    return model


def _create_torch_model(model_args: ModelArguments, config, label: str, tokenizer):
    """The PyTorch model, with room in its embeddings for every token of the tokenizer."""
    model = _load_or_create_model(model_args, config, label)
    # A tokenizer with more tokens than the model's embeddings (added tokens) needs room.
    # Under DeepSpeed ZeRO-3 the weight is an empty placeholder (its real shape is ds_shape): reading its
    # shape would "grow" a 32,128-row embedding to the tokenizer's 225 rows, silently retraining it.
    weight = model.get_input_embeddings().weight
    embedding_size = getattr(weight, "ds_shape", weight.shape)[0]
    if len(tokenizer) > embedding_size:
        model.resize_token_embeddings(len(tokenizer))
    return model


def load_seq2seq(model_args: ModelArguments, create_model=None):
    """Load (tokenizer, model) of an encoder-decoder model from a hub name or a folder.

    Without --model_name_or_path, --config_name (or --model_type) gives the config of a new model
    with random weights (training from scratch); the tokenizer then comes from --tokenizer_name.
    """
    from transformers import AutoConfig

    name = model_args.model_name_or_path
    model_type = getattr(model_args, "model_type", None)
    _check_model_arguments(model_args)
    config_name = model_args.config_name or name
    if config_name:
        _check_model_folder("config_name" if model_args.config_name else "model_name_or_path", config_name)
        try:
            config = AutoConfig.from_pretrained(
                config_name,
                **_hub_options(model_args),
            )
        except (OSError, ValueError) as error:
            raise _explain_load_error("model config", config_name, error) from None
    else:
        config = _from_scratch_config(model_args)
    label = name or config_name or model_type
    if not getattr(config, "is_encoder_decoder", False):
        raise UserError(
            f"{label!r} is a {config.model_type} model, not an encoder-decoder (sequence-to-sequence) model. "
            f"Fix: use a model such as T5, BART, Pegasus or mT5."
        )

    tokenizer = load_tokenizer(model_args.tokenizer_name or name, model_args)
    if not name:
        _match_special_tokens(config, tokenizer, replace=not config_name)
    model = (create_model or _create_torch_model)(model_args, config, label, tokenizer)
    if not hasattr(tokenizer, "src_lang"):  # multilingual (mBART): the target language may start it, see below
        check_decoder_start(model, label)
    return tokenizer, model


def check_decoder_start(model, label: str) -> None:
    if getattr(model.config, "decoder_start_token_id", None) is None:
        raise UserError(
            f"the model {label!r} has no decoder_start_token_id in its config. Fix: set it in config.json "
            f"(usually the pad or bos token id; for mBART, pass the target language)."
        )


def remember_task_settings(model, data_args: DataArguments) -> None:
    """Store how the model is fine-tuned in its config, so every checkpoint and the final model
    carry it: the source prefix, the input length and the generation length (and beams), and
    for translation the languages.

    They go where Hugging Face models keep them (config.task_specific_params["summarization"],
    as google-t5/t5-small does; "translation" for translation); `seqtune summarize` and
    `seqtune translate` apply them.
    """
    task = task_of(data_args)
    params = dict(getattr(model.config, "task_specific_params", None) or {})
    settings = dict(params.get(task.name) or {})
    settings["prefix"] = data_args.source_prefix or ""
    settings["max_source_length"] = data_args.max_source_length
    settings["max_length"] = data_args.val_max_target_length
    if data_args.num_beams is not None:
        settings["num_beams"] = data_args.num_beams
    if (settings.get("min_length") or 0) > settings["max_length"]:
        del settings["min_length"]
    if isinstance(data_args, TranslationDataArguments):
        settings.update(source_lang=data_args.source_lang, target_lang=data_args.target_lang)
    params[task.name] = settings
    model.config.task_specific_params = params


def task_settings(config, task: str = "summarization") -> dict:
    """The settings `remember_task_settings` stored for `task` (or a hub model's own), else {}."""
    params = getattr(config, "task_specific_params", None) or {}
    return dict(params.get(task) or {})


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
