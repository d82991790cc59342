"""LoRA adapters (PEFT) for both recipes: `--use_peft` / `--lora_r` and friends.

The one place that knows about PEFT; the rest of seqtune calls it at a few points:

- `apply_lora` (from `recipes.common.set_up_run`): the model the run trains is the base
  model wrapped by `peft.get_peft_model` with a `LoraConfig` built from the flags; the target
  layers default per model type (`DEFAULT_TARGET_MODULES`), and a target that matches none of
  the model's layers is refused with the names it has.
- checkpoints: the Trainer saves a PEFT model's adapter only (transformers does it, and resumes
  from it); `register_checkpoint_hooks` makes Accelerate's `save_state` / `load_state` do the same
  in the Accelerate recipe. The optimizer only ever holds the trainable (adapter) parameters, so
  a checkpoint is the adapter plus its optimizer state, written through `seqtune.checkpoints`
  (staging folder, manifest, one rename) as any other. `check_adapter_checkpoint` refuses to
  resume a LoRA checkpoint without LoRA (and the reverse, or another rank).
- the end of a run (`save_final`): the output dir is the adapter folder (adapter_config.json,
  adapter_model.safetensors, the tokenizer, and the base model's config.json carrying seqtune's
  task settings); `--merge_adapter` also writes OUTPUT_DIR/merged, a full model.
- `seqtune summarize --model ADAPTER_FOLDER` (`load_adapter_folder`): the base model named in
  adapter_config.json, the adapter merged into it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sys

from .errors import UserError
from .runtime import barrier, is_main_process

logger = logging.getLogger(__name__)

PEFT_REQUIREMENT = "peft==0.21.2"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
MERGED_DIR_NAME = "merged"
ALL_LINEAR = "all-linear"  # PEFT's name for every Linear layer but the output layer

# The attention projections LoRA adapts by default (query and value, as in the LoRA paper).
DEFAULT_TARGET_MODULES = {
    **dict.fromkeys(("t5", "mt5", "umt5", "longt5", "switch_transformers"), ["q", "v"]),
    **dict.fromkeys(
        ("bart", "mbart", "pegasus", "marian", "blenderbot", "blenderbot-small", "plbart", "m2m_100"),
        ["q_proj", "v_proj"],
    ),
}


def require_peft():
    try:
        import peft
    except ImportError:
        raise UserError(
            f"--use_peft (LoRA) needs the peft library, which is not installed. Fix: pip install {PEFT_REQUIREMENT}."
        ) from None
    return peft


# --------------------------------------------------------------------------- wrapping the model


def unwrap(model):
    """The model inside DDP, DeepSpeed and torch.compile wrappers."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_torch_compile=False)


def is_adapter_model(model) -> bool:
    """Whether `model` (possibly wrapped by DDP) is a PEFT model: only its adapter is trained and saved."""
    if "peft" not in sys.modules:  # never imported: no PEFT model exists (and a run without LoRA never pays for it)
        return False
    from peft import PeftModel

    return isinstance(unwrap(model), PeftModel)


def linear_layer_names(model) -> dict[str, int]:
    """{last name component: how many} of the model's Linear layers (what --lora_target_modules names)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and name:
            short = name.rsplit(".", 1)[-1]
            counts[short] = counts.get(short, 0) + 1
    return counts


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)  # PEFT's rule for a list of names


def target_modules(model, requested: list[str] | None) -> list[str] | str:
    """The layers that get adapters: the flag's, or the model type's default; each must match a Linear layer."""
    import torch
    from transformers.pytorch_utils import Conv1D

    model_type = getattr(model.config, "model_type", None)
    if requested and ALL_LINEAR in requested:
        return ALL_LINEAR
    targets = list(requested or DEFAULT_TARGET_MODULES.get(model_type) or []) or None
    if targets is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    layers = linear_layer_names(model)
    listing = ", ".join(f"{name} ({count})" for name, count in sorted(layers.items(), key=lambda item: -item[1]))
    if targets is None:
        raise UserError(
            f"seqtune has no default LoRA target layers for {model_type} models. Fix: pass --lora_target_modules "
            f"with names of its Linear layers (with how many of each): {listing}; or --lora_target_modules all-linear."
        )
    linear = [name for name, module in model.named_modules() if isinstance(module, (torch.nn.Linear, Conv1D)) and name]
    for target in targets:
        if not any(_matches(name, target) for name in linear):
            where = "--lora_target_modules" if requested else f"the default LoRA target {targets} of {model_type}"
            raise UserError(
                f"{where}: {target!r} matches none of the model's Linear layers. Its Linear layers (with how many "
                f"of each) are: {listing}. Fix: pass --lora_target_modules with some of these names "
                f"(e.g. the attention's query and value), or all-linear."
            )
    return targets


def base_model_reference(name: str | None) -> str | None:
    """What adapter_config.json names as the base model: a local folder as an absolute path, else the hub id."""
    if name and os.path.isdir(os.path.expanduser(name)):
        return os.path.abspath(os.path.expanduser(name))
    return name


def apply_lora(model, model_args):
    """The model wrapped with LoRA adapters (`--use_peft`), or `model` itself without it."""
    if not getattr(model_args, "use_peft", False):
        return model
    peft = require_peft()
    targets = target_modules(model, model_args.lora_target_modules)
    config = peft.LoraConfig(
        task_type=peft.TaskType.SEQ_2_SEQ_LM,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
    )
    wrapped = peft.get_peft_model(model, config)
    wrapped.peft_config["default"].base_model_name_or_path = base_model_reference(model_args.model_name_or_path)
    trainable, total = wrapped.get_nb_trainable_parameters()
    logger.info(
        "LoRA (r=%d, alpha=%g, dropout=%g) on %s: training %d of %d parameters (%.3f%%).",
        model_args.lora_r,
        model_args.lora_alpha,
        model_args.lora_dropout,
        targets if isinstance(targets, str) else ",".join(targets),
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )
    return wrapped


def adapter_summary(model) -> dict | None:
    """The adapter's settings and size for the model card and the report (None: not a LoRA run)."""
    if not is_adapter_model(model):
        return None
    peft_model = unwrap(model)
    config = peft_model.peft_config["default"]
    trainable, total = peft_model.get_nb_trainable_parameters()
    modules = config.target_modules
    return {
        "method": "LoRA",
        "base_model": config.base_model_name_or_path,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": modules if isinstance(modules, str) else sorted(modules),
        "trainable_parameters": trainable,
        "total_parameters": total,
    }


# --------------------------------------------------------------------------- checkpoints


def _remove_peft_card(folder: str) -> None:
    """PeftModel.save_pretrained writes its own README.md; seqtune's card (card.py) is the run's."""
    if is_main_process():
        try:
            os.remove(os.path.join(folder, "README.md"))
        except OSError:
            pass


def complete_adapter_folder(model, folder: str) -> None:
    """Beside an adapter PEFT saved: the base model's config.json and generation_config.json, which carry
    seqtune's task settings (source prefix, lengths: `seqtune summarize` applies them), instead of PEFT's
    README.md (seqtune's card is the run's). Main process only; nothing for a model without an adapter."""
    if not is_main_process() or not is_adapter_model(model):
        return
    _remove_peft_card(folder)
    base = unwrap(model).get_base_model()
    base.config.save_pretrained(folder)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(folder)


def save_adapter(model, folder: str) -> None:
    """The adapter's config and weights (every process calls it; the main one writes)."""
    unwrap(model).save_pretrained(folder, is_main_process=is_main_process())
    complete_adapter_folder(model, folder)


def load_adapter_weights(model, folder: str) -> None:
    """Put the adapter weights saved in `folder` into the (wrapped) PEFT model, in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    peft_model = unwrap(model)
    result = set_peft_model_state_dict(peft_model, load_file(os.path.join(folder, ADAPTER_WEIGHTS_NAME)))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise UserError(
            f"checkpoint {folder}: its adapter has weights this model lacks ({unexpected[0]}, ...). Fix: resume with "
            f"the LoRA flags the run started with, or pass --overwrite_output_dir to start afresh."
        )


def register_checkpoint_hooks(accelerator) -> None:
    """Accelerate's save_state writes every weight of a model: for a PEFT model write the adapter instead
    (adapter_config.json, adapter_model.safetensors: loadable with PEFT), and load_state reads it back."""

    def save_hook(models, weights, output_dir):
        for index in reversed(range(len(models))):
            if is_adapter_model(models[index]) and index < len(weights):
                save_adapter(models[index], output_dir)
                weights.pop(index)

    def load_hook(models, input_dir):
        for index in reversed(range(len(models))):
            if is_adapter_model(models[index]):
                load_adapter_weights(models[index], input_dir)
                models.pop(index)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def check_same_model(checkpoint: str, model, model_name: str | None = None) -> None:
    """`checkpoints.check_same_model`, LoRA-aware: also refuse a LoRA checkpoint in a run that trains every
    weight, a full checkpoint in a LoRA run, or an adapter of another rank or other layers."""
    from . import checkpoints

    if not check_adapter_checkpoint(checkpoint, model):
        checkpoints.check_same_model(checkpoint, model, model_name)


def check_adapter_checkpoint(checkpoint: str, model) -> bool:
    """The LoRA checks of `check_same_model`; returns whether `checkpoint` holds an adapter (its shapes
    then compared with the model's adapter)."""
    from .checkpoints import checkpoint_weight_shapes

    path = os.path.join(checkpoint, ADAPTER_WEIGHTS_NAME)
    has_adapter = os.path.isfile(path)
    fix = "Fix: resume with the flags the run started with, or pass --overwrite_output_dir (or another --output_dir)"
    if has_adapter and not is_adapter_model(model):
        raise UserError(
            f"checkpoint {checkpoint} holds a LoRA adapter, but this run trains every weight (no --use_peft or "
            f"--lora_r). {fix} to start afresh."
        )
    if not has_adapter:
        if is_adapter_model(model) and checkpoint_weight_shapes(checkpoint) is not None:
            raise UserError(
                f"checkpoint {checkpoint} holds a fully fine-tuned model, but this run trains LoRA adapters "
                f"(--use_peft/--lora_r). {fix} to start afresh."
            )
        return False
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        saved = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    here = {name: tuple(tensor.shape) for name, tensor in get_peft_model_state_dict(unwrap(model)).items()}
    for name in sorted(set(saved) | set(here)):
        if saved.get(name) != here.get(name):
            there_text, here_text = (str(list(s)) if s else "absent" for s in (saved.get(name), here.get(name)))
            raise UserError(
                f"checkpoint {checkpoint} holds another LoRA adapter than this run's (weight '{name}' is {there_text} "
                f"there, {here_text} here: another --lora_r or --lora_target_modules?). {fix} to start afresh."
            )
    return True


# --------------------------------------------------------------------------- the end of a run


def save_final(saver, model, tokenizer, model_args, output_dir: str) -> list[str]:
    """`outputs.save_final_model(saver, output_dir)`; for a LoRA run the output dir becomes the adapter folder
    (with the base config.json holding seqtune's summarization settings) and, with --merge_adapter,
    OUTPUT_DIR/merged the full model. Returns the names written (recorded for --overwrite_output_dir)."""
    from .outputs import save_final_model

    if not is_adapter_model(model):
        return save_final_model(saver, output_dir)

    def save_adapter_folder(folder: str) -> None:
        saver(folder)
        complete_adapter_folder(model, folder)

    names = save_final_model(save_adapter_folder, output_dir)
    if getattr(model_args, "merge_adapter", False):
        names.append(save_merged_model(model, tokenizer, model_args, output_dir))
    return names


def save_merged_model(model, tokenizer, model_args, output_dir: str) -> str:
    """OUTPUT_DIR/merged: the base model, loaded afresh on the CPU, with the saved adapter merged into it
    (the same as a user's `PeftModel.from_pretrained(base, OUTPUT_DIR).merge_and_unload()`), published in
    one rename. The training model is left as it is."""
    from .checkpoints import STAGING_DIR_NAME, guarded_save, publish

    staged = os.path.join(output_dir, STAGING_DIR_NAME, MERGED_DIR_NAME)
    if is_main_process():
        shutil.rmtree(staged, ignore_errors=True)
        with guarded_save("the merged model", output_dir, staged=staged):
            _, merged = merge_adapter_folder(output_dir, model_args)
            trained = unwrap(model).get_base_model()
            merged.config.task_specific_params = copy.deepcopy(getattr(trained.config, "task_specific_params", None))
            merged.config.forced_bos_token_id = getattr(trained.config, "forced_bos_token_id", None)
            merged.generation_config = copy.deepcopy(trained.generation_config)
            merged.save_pretrained(staged)
            tokenizer.save_pretrained(staged)
            publish(staged, os.path.join(output_dir, MERGED_DIR_NAME))
        try:
            os.rmdir(os.path.dirname(staged))
        except OSError:
            pass
        logger.info("Saved the base model with the adapter merged into it to %s.", os.path.join(output_dir, "merged"))
    barrier()
    return MERGED_DIR_NAME


def merge_adapter_folder(folder: str, model_args=None, token: str | None = None):
    """(tokenizer, model): the base model named in `folder`'s adapter_config.json with the adapter merged into
    it (on the CPU); the tokenizer saved beside the adapter, else the base model's."""
    from peft import PeftModel

    from .arguments import ModelArguments
    from .modeling import load_seq2seq

    base_name = adapter_base_model(folder)
    if model_args is not None:  # the training run's hub options (cache, revision, token)
        options = {
            key: getattr(model_args, key) for key in ("cache_dir", "model_revision", "token", "trust_remote_code")
        }
    else:
        options = {"token": token}
    tokenizer_name = folder if os.path.isfile(os.path.join(folder, "tokenizer_config.json")) else None
    tokenizer, base = load_seq2seq(
        ModelArguments(model_name_or_path=base_name, tokenizer_name=tokenizer_name, **options)
    )
    return tokenizer, PeftModel.from_pretrained(base, folder).merge_and_unload()


# --------------------------------------------------------------------------- seqtune summarize


def is_adapter_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(os.path.expanduser(folder), ADAPTER_CONFIG_NAME))


def adapter_base_model(folder: str) -> str:
    """The base model an adapter folder names (base_model_name_or_path of adapter_config.json), checked."""
    path = os.path.join(folder, ADAPTER_CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            base = json.load(handle).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as error:
        raise UserError(f"{path} cannot be read ({error}). Fix: pass a folder a LoRA run wrote.") from None
    fix = f"Fix: set base_model_name_or_path in {path} to the base model's folder or hub id."
    if not base:
        raise UserError(f"the adapter in {folder} does not name its base model. {fix}")
    if os.path.isabs(base) and not os.path.isdir(base):
        raise UserError(f"the adapter in {folder} was trained on {base}, which is not there any more. {fix}")
    return base


def load_adapter_folder(folder: str, token: str | None = None):
    """(tokenizer, model) for `seqtune summarize` from an adapter folder: the base model with the adapter
    merged into it, with the summarization settings saved beside the adapter; None for any other folder."""
    folder = os.path.expanduser(folder)
    if not is_adapter_folder(folder):
        return None
    require_peft()
    from transformers import AutoConfig, GenerationConfig

    tokenizer, model = merge_adapter_folder(folder, token=token)
    if os.path.isfile(os.path.join(folder, "config.json")):
        saved = AutoConfig.from_pretrained(folder)
        model.config.task_specific_params = getattr(saved, "task_specific_params", None)
        model.config.forced_bos_token_id = getattr(saved, "forced_bos_token_id", None)
    if os.path.isfile(os.path.join(folder, "generation_config.json")):
        model.generation_config = GenerationConfig.from_pretrained(folder)
    logger.info("Loaded the LoRA adapter %s on its base model %s (merged).", folder, adapter_base_model(folder))
    return tokenizer, model
