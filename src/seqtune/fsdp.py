"""FSDP applied by seqtune itself (PyTorch's FSDP2, `fully_shard`): the Accelerate recipe's on every device, the
Trainer recipe's on CPUs (on GPUs transformers runs the Trainer's --fsdp itself).

accelerate enables its FSDP plugin only on accelerator devices (on CPUs it silently trains with plain
DDP), and FSDP1's full-state-dict gather with CPU offload crashed on CPUs; FSDP2 works on both. So
seqtune shards the model itself, the same way on CPUs (gloo) and GPUs (nccl):

- `shard_for_training`: the checks and the process group, then `shard_model`: `fully_shard` on every
  transformer block (the model's `_no_split_modules`: T5Block, BART's encoder and decoder layers), then
  on the whole model (embeddings, final norms, head). Each process keeps 1/N of every weight (a DTensor
  sharded on dim 0); a block's weights are gathered for its forward and backward only. accelerate never
  wraps the model (no DDP on top); the optimizer is built after sharding, on the shards. On a CPU, freed
  large buffers go back to the OS at once (glibc's heap kept the gathered weights of every block: a
  process's peak RSS was 2.6 GB instead of 1.7 GB for t5-small's shapes, above DDP's;
  benchmarks/bench_sharding.py).
- `save_sharded` / `load_sharded`: model and optimizer state as torch.distributed.checkpoint (DCP)
  writes them, each process its own shard, into the checkpoint's staging folder (`FOLDER`); the
  checkpoint is published by `seqtune.checkpoints` as every other (manifest last, one rename). DCP
  reshards on load, so a checkpoint of N processes loads on M.
- `full_state_dict`: the final weights gathered on the main process only (offloaded to its CPU
  memory as they come; the other processes get {}), for `save_pretrained`.
- `prepare_for_generation`: evaluation runs the encoder outside the model's forward (one encoder pass
  for loss and `generate`), so the whole-model group (embeddings) is gathered first; generation keeps
  every process stepping until all are done (`synced_gpus`), as each step gathers the blocks;
  `end_generation` frees that group again.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch

logger = logging.getLogger(__name__)

FOLDER = "fsdp"  # the DCP files inside a checkpoint folder

# T5's and BART's blocks return their hidden states in a tuple (views): FSDP2 warns about in-place ops on them
# at every step; the models do none (an FSDP run's weights match a DDP run's, tests/test_fsdp.py).
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def block_classes(model) -> set[str]:
    """Class names of the blocks sharded one by one (the model's `_no_split_modules`)."""
    return set(getattr(model, "_no_split_modules", None) or [])


def shard_for_training(model, device: torch.device, bf16: bool = False):
    """The model sharded for training (`shard_model`), in a process group of one when there is none; a LoRA model
    is refused (its frozen weights and trainable adapters would need sharding apart)."""
    from .adapters import is_adapter_model
    from .errors import UserError

    if is_adapter_model(model):
        raise UserError(
            "--fsdp does not shard a LoRA model (--use_peft) in seqtune yet. Fix: drop --fsdp or --use_peft."
        )
    ensure_process_group(device)
    return shard_model(model, device, bf16=bf16)


def is_sharded_by_seqtune(model) -> bool:
    """Whether `shard_model` sharded `model` (not transformers' or accelerate's FSDP)."""
    return getattr(model, "_sharded_by_seqtune", False)


def shard_model(model, device: torch.device, bf16: bool = False):
    """Shard `model` in place with FSDP2 over all processes; return it (now an FSDPModule)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if device.type == "cpu":  # the gathered weights come and go at every block: give their memory back
        from .generation import return_large_buffers_to_os

        return_large_buffers_to_os()
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    settings = {"mesh": mesh}
    if bf16:  # compute in bf16, reduce gradients and keep the weights in fp32
        settings["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    names = block_classes(model)
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} names no blocks to shard (_no_split_modules is empty)")
    for block in blocks:
        fully_shard(block, **settings)
    fully_shard(model, **settings)
    model._is_fsdp_managed_module = True  # transformers' generate then keeps the processes in step
    model._sharded_by_seqtune = True
    held = [0] * dist.get_world_size()
    dist.all_gather_object(held, local_numel(model))
    logger.info(
        "FSDP2: %d %s blocks and the rest of the model sharded over %d processes, holding %s of its %s weights.",
        len(blocks),
        "/".join(sorted(names)),
        dist.get_world_size(),
        " + ".join(f"{count:,}" for count in held),
        f"{sum(p.numel() for p in model.parameters()):,}",
    )
    return model


def local_numel(model) -> int:
    """Elements of the weights this process holds (its shards)."""
    from torch.distributed.tensor import DTensor

    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())


def prepare_for_generation(model) -> None:
    """Gather the whole-model group (embeddings, final norms): the encoder is called outside the model's
    forward in evaluation, where FSDP would not gather them; `end_generation` frees them again.

    FSDP2 makes the first module to run forward its root: when evaluation comes first (a run resumed at its
    last step), the encoder's first block would take that role and the model's forward then fails ("FSDP
    requires running forward through the root module first"), so the model is made root here (a no-op once
    a training step ran; torch has no public call for it)."""
    model._get_fsdp_state()._lazy_init()
    model.unshard()


def end_generation(model) -> None:
    """Free the whole-model group gathered by `prepare_for_generation`: the final gather of the weights
    (`full_state_dict`) and a checkpoint (DCP) then start from the sharded state FSDP expects, as after a
    training step."""
    model.reshard()


def _state_dict_options(**options):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**options)


def save_sharded(model, optimizer, folder: str) -> None:
    """Every process writes its shards of the model and optimizer state into folder/FOLDER (DCP)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=os.path.join(folder, FOLDER))


def load_sharded(model, optimizer, folder: str) -> None:
    """Load folder/FOLDER into the sharded model and optimizer (resharded if it was saved on another
    number of processes)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=os.path.join(folder, FOLDER))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def has_sharded_state(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, FOLDER))


def check_same_sharding(checkpoint: str, sharded_run: bool) -> None:
    """An FSDP checkpoint (DCP shards) resumes an FSDP run only, and the other way round."""
    from .errors import UserError

    sharded = has_sharded_state(checkpoint)
    if sharded != sharded_run:
        written, asked = ("with", "without") if sharded else ("without", "with")
        raise UserError(
            f"{checkpoint} was written {written} --fsdp, and this run is {asked} it: its model and optimizer state "
            f"cannot be loaded this way. Fix: run {written} --fsdp as the checkpoint was, or pass "
            f"--overwrite_output_dir (or another --output_dir) to start afresh."
        )


def full_state_dict(model) -> dict:
    """The whole model's weights on the main process (gathered a tensor at a time into CPU memory), {} on the
    others. A tied weight (T5's and BART's shared embeddings and head) comes once, under its first name, as
    save_pretrained writes it (the gathered copies no longer share storage, so it would write each)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_state_dict_options(full_state_dict=True, cpu_offload=True))
    first_name: dict[int, str] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        first_name.setdefault(id(parameter), name)
    tied = {
        name for name, parameter in model.named_parameters(remove_duplicate=False) if first_name[id(parameter)] != name
    }
    return {name: tensor for name, tensor in state.items() if name not in tied}


def ensure_process_group(device: torch.device) -> None:
    """FSDP2 needs a process group: one of a single process when the run was started without a launcher
    (plain `python`), so that --fsdp runs (and resumes an FSDP checkpoint) on one process too."""
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
