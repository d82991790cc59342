"""PyTorch/XLA (TPUs): the one module of seqtune that knows about XLA.

Both recipes reach it through the shared steps (`recipes.common.set_up_run` / `wrap_up_run`), plus one
call each for what only they have; nothing else in seqtune imports torch_xla.

- `on_xla()`: whether this process trains on an XLA device. transformers and Accelerate
  use one as soon as torch_xla is importable (unless USE_TORCH_XLA=0), with or without
  `xla_spawn.py`; seqtune follows the same rule.
- `prepare_for_xla(data_args, model)`: static shapes, before the data is tokenized. XLA
  compiles one graph per distinct tensor shape, so every example is padded to
  --max_source_length / --max_target_length and `model.generate` becomes a fixed-size
  greedy decoder (`fixed_size_generate`: the same ids, every step the same shapes).
- `prepare_trainer_arguments(training_args)`: the Trainer's default fused AdamW refuses
  XLA tensors; the plain one runs there. `cpu_state_dict`: weights to save, on the CPU.
- `compilation_count()` / `log_compilations()`: how many XLA graphs were compiled, logged
  at the end of a run (torch_xla.debug.metrics). With static shapes it stays small and
  does not grow with the number of steps; a count that does means recompiling.
- `spawn(num_cores, script, script_args)`: the core of `examples/pytorch/xla_spawn.py`:
  import the script as a module, hand it its arguments and run its `_mp_fn(index)` on
  every replica through `xmp.spawn`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys

from .errors import UserError

logger = logging.getLogger(__name__)


def xla_installed() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def on_xla() -> bool:
    """True when transformers and Accelerate will put the model on an XLA device."""
    if not xla_installed():
        return False
    from transformers.utils import is_torch_xla_available

    return is_torch_xla_available()


def device_type() -> str:
    """The PJRT device type (TPU, CPU, CUDA, ...); torch_xla picks a default when PJRT_DEVICE is unset."""
    import torch_xla.runtime as xr

    return xr.device_type() or "CPU"


# --------------------------------------------------------------------------- settings


def prepare_for_xla(data_args, model) -> bool:
    """On an XLA device, make every shape static; return whether this is one (a no-op elsewhere).

    Called by `recipes.common.set_up_run` once the model is loaded, before tokenization:
    every example is padded to the maximum lengths, and `model.generate` becomes the
    fixed-size greedy decoder below.
    """
    if not on_xla():
        return False
    if not data_args.pad_to_max_length:
        data_args.pad_to_max_length = True
        logger.info(
            "XLA device: padding every example to --max_source_length %d / --max_target_length %d "
            "(static shapes: XLA compiles the training step once instead of once per batch width).",
            data_args.max_source_length,
            data_args.max_target_length,
        )
    use_fixed_size_generation(model, step_end=_mark_step)
    _complete_accelerate_device_loader()
    return True


def prepare_trainer_arguments(training_args) -> None:
    """The Trainer's settings for an XLA device (a no-op elsewhere): the default fused AdamW
    refuses XLA tensors, the plain one runs there."""
    if not on_xla():
        return
    from transformers.training_args import OptimizerNames

    if training_args.optim == OptimizerNames.ADAMW_TORCH_FUSED:
        training_args.optim = OptimizerNames.ADAMW_TORCH
        logger.info("XLA device: --optim adamw_torch (the fused AdamW does not run on XLA tensors).")


def _mark_step() -> None:
    import torch_xla

    torch_xla.sync()


def _complete_accelerate_device_loader() -> None:
    """Accelerate's data loader for XLA devices (MpDeviceLoaderWrapper) lacks the `dataset`,
    `get_sampler` and `set_sampler` that `Accelerator.save_state` / `load_state` read
    (accelerate 1.15: an AttributeError at the first checkpoint). Delegate them to the
    loader it wraps, as its other attributes are."""
    from accelerate import data_loader

    wrapper = getattr(data_loader, "MpDeviceLoaderWrapper", None)
    if wrapper is None or hasattr(wrapper, "dataset"):
        return
    wrapper.dataset = property(lambda self: self._loader.dataset)
    wrapper.get_sampler = lambda self: self._loader.get_sampler()
    wrapper.set_sampler = lambda self, sampler: self._loader.set_sampler(sampler)


def cpu_state_dict(state_dict: dict) -> dict:
    """The weights to save: copied to the CPU on an XLA device (safetensors reads tensor memory
    directly, which XLA tensors do not have), unchanged elsewhere."""
    if not on_xla():
        return state_dict
    return {name: tensor.cpu() if hasattr(tensor, "cpu") else tensor for name, tensor in state_dict.items()}


# --------------------------------------------------------------------------- fixed-size generation

# Generation options the fixed-size decoder honours at these values only (the greedy search
# with no logits processing); anything else falls back to transformers' own generate().
_NEUTRAL_OPTIONS = {
    "do_sample": (None, False),
    "num_beams": (None, 1),
    "num_return_sequences": (None, 1),
    "min_length": (None, 0),
    "min_new_tokens": (None,),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
    "forced_decoder_ids": (None,),
    "stop_strings": (None,),
    "guidance_scale": (None, 1.0),
    "return_dict_in_generate": (None, False),
    "output_scores": (None, False),
    "output_logits": (None, False),
}


def unsupported_generation_options(generation_config, overrides: dict) -> list[str]:
    """The options (from the model's generation config or this call) the fixed-size decoder cannot honour."""
    found = []
    for name, neutral in _NEUTRAL_OPTIONS.items():
        value = overrides[name] if name in overrides else getattr(generation_config, name, None)
        if value not in neutral:
            found.append(f"{name}={value!r}")
    return found


def fixed_size_generate(
    model, input_ids=None, attention_mask=None, *, max_length: int, encoder_outputs=None, step_end=None
):
    """Greedy decoding of an encoder-decoder model with the same tensor shapes at every step.

    transformers' generate() grows the output by one token per step (and stops early when
    every sequence has ended), so on XLA each decoding step is a new graph to compile.
    Here the output is a fixed [batch, max_length] buffer: each step runs the decoder over
    the whole buffer (its causal mask hides the positions not yet written), takes the
    logits at the current position through a tensor index and writes the next token with
    `torch.where`; sequences that ended are filled with the pad token, and every batch runs
    all max_length - 1 steps. The steps between the first and the last are one graph.
    Returns the same ids as greedy generate(), padded to max_length. Like generate(), it takes
    the encoder's outputs instead of `input_ids` when the caller has already run the encoder.
    """
    import torch

    config = model.generation_config
    start = config.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else model.config.pad_token_id
    eos = config.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    with torch.no_grad():
        if encoder_outputs is None:
            encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        encoded = encoder_outputs[0]  # [batch, source length, hidden]
        device, batch = encoded.device, encoded.shape[0]
        tokens = torch.full((batch, max_length), pad, dtype=torch.long, device=device)
        tokens[:, 0] = start
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        columns = torch.arange(max_length, device=device)
        eos_tensor = torch.tensor(eos_ids or [-1], dtype=torch.long, device=device)
        position = torch.zeros((), dtype=torch.long, device=device)  # the last written position
        for step in range(1, max_length):
            logits = model(
                encoder_outputs=encoder_outputs,
                attention_mask=attention_mask,
                decoder_input_ids=tokens,
                use_cache=False,
            ).logits
            scores = logits.index_select(1, position.reshape(1)).squeeze(1)  # [batch, vocab]
            if step == 1 and config.forced_bos_token_id is not None:
                following = torch.full((batch,), config.forced_bos_token_id, dtype=torch.long, device=device)
            elif step == max_length - 1 and config.forced_eos_token_id is not None:
                forced = config.forced_eos_token_id
                following = torch.full(
                    (batch,), forced if isinstance(forced, int) else forced[0], dtype=torch.long, device=device
                )
            else:
                following = scores.argmax(-1)
            following = torch.where(done, torch.full_like(following, pad), following)
            position = position + 1
            tokens = torch.where(columns.unsqueeze(0) == position, following.unsqueeze(1), tokens)
            done = done | (following.unsqueeze(1) == eos_tensor).any(1)  # (torch.isin falls back to the CPU on XLA)
            if step_end is not None:
                step_end()
    return tokens


def use_fixed_size_generation(model, step_end=None) -> None:
    """Make `model.generate` the fixed-size greedy decoder whenever the options allow it
    (transformers' own generate() otherwise, with a warning that it recompiles)."""
    original = model.generate
    if not getattr(model.config, "is_encoder_decoder", False):
        return
    warned = []

    def generate(input_ids=None, attention_mask=None, encoder_outputs=None, **kwargs):
        options = {
            k: v
            for k, v in kwargs.items()
            if k not in ("synced_gpus", "labels", "decoder_input_ids", "decoder_attention_mask")
        }
        unsupported = unsupported_generation_options(model.generation_config, options)
        unsupported += [
            f"{name}=..." for name in options if name not in ("max_length", "max_new_tokens", *_NEUTRAL_OPTIONS)
        ]
        if unsupported or (input_ids is None and encoder_outputs is None):
            if not warned:
                warned.append(True)
                logger.warning(
                    "Generation with %s: using transformers' generate(), whose shapes change at every "
                    "decoding step (one XLA compilation per step). Fix: --num_beams 1 and greedy "
                    "settings for static shapes.",
                    ", ".join(unsupported) or "no input_ids",
                )
            return original(
                input_ids=input_ids, attention_mask=attention_mask, encoder_outputs=encoder_outputs, **kwargs
            )
        if options.get("max_new_tokens") is not None:
            max_length = options["max_new_tokens"] + 1
        else:
            max_length = options.get("max_length") or model.generation_config.max_length or 20
        return fixed_size_generate(
            model, input_ids, attention_mask, max_length=max_length, encoder_outputs=encoder_outputs, step_end=step_end
        )

    model.generate = generate


# --------------------------------------------------------------------------- compilations


def compilation_count() -> int | None:
    """Graphs compiled so far in this process (None when not on XLA)."""
    if not on_xla():
        return None
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    return int(data[0]) if data else 0


def log_compilations() -> int | None:
    """Log the number of XLA graph compilations of this process (no-op when not on XLA)."""
    count = compilation_count()
    if count is None:
        return None
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    seconds = data[1] / 1e9 if data else 0.0
    executions = met.metric_data("ExecuteTime")
    logger.info(
        "XLA graph compilations: %d (%.1f s compiling; %d graph executions). A count that grows with the "
        "number of steps means shapes change between batches.",
        count,
        seconds,
        int(executions[0]) if executions else 0,
    )
    return count


# --------------------------------------------------------------------------- xla_spawn


def check_num_cores(num_cores: int, device: str) -> None:
    """Refuse a replica count the device cannot run, before anything starts."""
    if num_cores < 1:
        raise UserError(f"--num_cores must be at least 1, got {num_cores}.")
    if num_cores > 1 and device == "CPU":
        raise UserError(
            f"--num_cores {num_cores} with PJRT_DEVICE=CPU: the CPU XLA device runs one replica only "
            "(XLA:CPU has no collectives across replicas, so several of them cannot train together). "
            "Fix: use --num_cores 1 on the CPU, or run on a TPU VM (PJRT_DEVICE=TPU) for more cores."
        )


def load_script(script: str):
    """Import a training script as a module (its folder goes on sys.path) and return it."""
    path = os.path.abspath(script)
    if not os.path.isfile(path):
        raise UserError(
            f"training script {script} does not exist. Fix: pass the path of a script, "
            "e.g. examples/pytorch/summarization/run_summarization.py."
        )
    folder, name = os.path.split(path)
    module_name = os.path.splitext(name)[0]
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.import_module(module_name)
    if not callable(getattr(module, "_mp_fn", None)):
        raise UserError(
            f"{script} has no _mp_fn(index) function, which xla_spawn.py runs on every core. "
            "Fix: add `def _mp_fn(index): main()` to the script."
        )
    return module


class _Replica:
    """What every replica runs: the script's _mp_fn, after checking the replica count (picklable)."""

    def __init__(self, module_name: str, num_cores: int):
        self.module_name = module_name
        self.num_cores = num_cores

    def __call__(self, index: int) -> None:
        import torch_xla.runtime as xr

        world = xr.world_size()
        if world != self.num_cores:
            raise UserError(
                f"--num_cores {self.num_cores}, but this machine has {world} XLA devices and xmp.spawn uses "
                f"all of them. Fix: --num_cores {world} (or 1)."
            )
        importlib.import_module(self.module_name)._mp_fn(index)


def spawn(num_cores: int, script: str, script_args: list[str]) -> None:
    """Run `script`'s `_mp_fn(index)` on `num_cores` XLA replicas with `script_args` as its sys.argv."""
    if not xla_installed():
        raise UserError(
            "xla_spawn.py needs PyTorch/XLA (torch_xla), which is not installed in this environment. "
            "Fix: install requirements-xla.txt in its own virtual environment (`make test-xla` builds .venv-xla), "
            "with torch_xla[tpu] on a TPU VM."
        )
    check_num_cores(num_cores, device_type())
    module = load_script(script)
    sys.argv = [script, *script_args]  # what the script's argument parser reads, on every replica
    import torch_xla.distributed.xla_multiprocessing as xmp

    # torch_xla takes nprocs=1 (run here, in this process) or None (one replica per device).
    xmp.spawn(_Replica(module.__name__, num_cores), args=(), nprocs=1 if num_cores == 1 else None)
