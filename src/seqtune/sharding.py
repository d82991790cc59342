"""Models larger than one device: DeepSpeed ZeRO for both recipes, and FSDP without a silent fallback.

- `deepspeed_config(value)`: the Trainer script's `--deepspeed CONFIG` (a path or inline JSON) and the
  loop's (`--deepspeed`, or `accelerate launch --use_deepspeed --deepspeed_config_file`), read and
  checked once at start (a missing file, invalid JSON or an unknown ZeRO stage is one message naming
  the file and the fix, exit 2), then adjusted for what the recipes need:
  - `train_batch_size: "auto"` is dropped: DeepSpeed derives it (micro batch x accumulation x
    processes), and ZeRO-3's `zero.Init`, which runs when the model loads, checks an "auto" one filled
    too early against the wrong process count ("8 != 4 * 1 * 1") and stops;
  - ZeRO-3 partitions a parameter only above `stage3_param_persistence_threshold` (DeepSpeed's
    default 100,000 elements keeps every weight of a small model whole on every process): when the
    config leaves it out, "auto" (10 x hidden size, filled once the model is known) is used;
  - ZeRO-3 saves no model file unless `stage3_gather_16bit_weights_on_model_save` is true (only
    DeepSpeed's shards): seqtune turns it on, so the final folder holds `model.safetensors`
    (gathered on rank 0, layer by layer) that `from_pretrained` and `seqtune summarize` load.
- `use_venv_extensions_dir()`: where DeepSpeed's JIT-compiled op is cached (see there).
- `loop_fsdp(args)`: the Accelerate recipe's --fsdp (or `accelerate launch --use_fsdp`): seqtune shards the
  model itself with FSDP2 on every device (`seqtune.fsdp`), accelerate's own FSDP plugin stays off.
- `trainer_fsdp(args, ...)`: the Trainer script's --fsdp is passed to transformers on GPUs; on a machine without
  GPUs, where transformers and accelerate would silently train with plain DDP, seqtune shards the model itself
  with FSDP2 (`seqtune.fsdp`, `seqtune.fsdp_trainer`) and refuses the options it does not do.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import sys

from .errors import UserError

logger = logging.getLogger(__name__)

SHIPPED_CONFIGS = "configs/deepspeed/zero2.json, zero2_offload.json, zero3.json or zero3_offload.json"
ZERO_STAGES = (0, 1, 2, 3)


def use_venv_extensions_dir() -> str | None:
    """Cache DeepSpeed's compiled ops inside the virtual environment; return the folder in use.

    On its first use on a CPU DeepSpeed compiles its shared-memory communication op (minutes) into
    TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions/pyXY_cpu: one folder for every
    environment of the user whatever its torch version, where a build against another torch fails to
    load. Inside a virtual environment (and TORCH_EXTENSIONS_DIR unset) seqtune points it at
    <venv>/torch_extensions: built once per venv (every run and every test after the first reuses it;
    `make test` on a fresh clone pays it once), deleted with the venv, never mixed with another
    torch's build. An explicit TORCH_EXTENSIONS_DIR always wins; outside a venv torch's default stays.
    """
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return os.environ["TORCH_EXTENSIONS_DIR"]
    if sys.prefix == sys.base_prefix or not os.access(sys.prefix, os.W_OK):
        return None
    folder = os.path.join(sys.prefix, "torch_extensions")
    os.environ["TORCH_EXTENSIONS_DIR"] = folder
    return folder


def require_deepspeed(flag: str) -> None:
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise UserError(
            f"{flag} needs DeepSpeed, which is not installed. Fix: pip install deepspeed==0.19.8 "
            f"(pinned in seqtune's requirements.txt)."
        )


def _fix_text(flag: str) -> str:
    return f"Fix: pass {flag} the path of a DeepSpeed JSON config (seqtune ships {SHIPPED_CONFIGS}) or the JSON itself."


def read_deepspeed_config(value, flag: str = "--deepspeed") -> tuple[dict, str]:
    """(the config, where it came from) of a path, inline JSON or a mapping (a YAML/JSON run config's
    value); every mistake is a UserError naming the file and the fix."""
    if isinstance(value, dict):
        config, where = value, f"{flag} (a mapping)"
    else:
        text = str(value).strip()
        if text.startswith("{"):
            where = f"{flag} (inline JSON)"
            try:
                config = json.loads(text)
            except json.JSONDecodeError as error:
                raise UserError(
                    f"{where} is not valid JSON: {error.msg} at column {error.colno}. {_fix_text(flag)}"
                ) from None
        else:
            path = os.path.abspath(os.path.expanduser(text))
            where = f"DeepSpeed config {path}"
            if not os.path.isfile(path):
                raise UserError(f"{flag} {text}: {path} does not exist. {_fix_text(flag)}")
            try:
                with open(path, encoding="utf-8") as handle:
                    config = json.load(handle)
            except json.JSONDecodeError as error:
                raise UserError(
                    f"{where} is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno}). "
                    f"Fix: correct the JSON there, or start from one of seqtune's ({SHIPPED_CONFIGS})."
                ) from None
            except (OSError, UnicodeDecodeError) as error:
                raise UserError(f"{where} cannot be read ({error}). {_fix_text(flag)}") from None
    if not isinstance(config, dict):
        raise UserError(f"{where} must be a JSON object ({{...}}), got {type(config).__name__}. {_fix_text(flag)}")
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise UserError(f'{where}: "zero_optimization" must be an object such as {{"stage": 2}}.')
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        raise UserError(
            f'{where}: unknown ZeRO stage {json.dumps(stage)} in "zero_optimization". '
            f'Fix: "stage": 2 (optimizer state and gradients sharded) or 3 (the weights too); '
            f"or start from one of seqtune's ({SHIPPED_CONFIGS})."
        )
    return config, where


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def deepspeed_config(value, flag: str = "--deepspeed") -> dict:
    """The checked config with the ZeRO-3 gotchas handled (see the module's docstring), for transformers or
    accelerate; also puts DeepSpeed's compiled ops in the venv (`use_venv_extensions_dir`)."""
    config, where = read_deepspeed_config(value, flag)
    require_deepspeed(flag)
    config = copy.deepcopy(config)
    if config.get("train_batch_size") == "auto":
        del config["train_batch_size"]  # DeepSpeed derives it; an early "auto" breaks ZeRO-3's zero.Init
    if zero_stage(config) == 3:
        zero = config["zero_optimization"]
        if "stage3_param_persistence_threshold" not in zero:
            zero["stage3_param_persistence_threshold"] = "auto"
            logger.info(
                "%s: stage3_param_persistence_threshold not set: using auto (10 x the hidden size), so that "
                "the weights are partitioned (DeepSpeed's default, 100000 elements, keeps a small model whole).",
                where,
            )
        if zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
            logger.info(
                "%s: stage3_gather_16bit_weights_on_model_save set to true, so that the final model folder "
                "holds model.safetensors (gathered on rank 0), loadable by from_pretrained.",
                where,
            )
    use_venv_extensions_dir()
    logger.info("DeepSpeed ZeRO stage %d (%s).", zero_stage(config), where)
    return config


def fill_loop_auto_values(config: dict, *, micro_batch: int, accumulation: int, max_grad_norm: float) -> dict:
    """The loop's own settings for the "auto" values it knows before the model loads (ZeRO-3's zero.Init
    reads the config then); accelerate fills the rest (mixed precision, bucket sizes) when it prepares.
    DeepSpeed clips gradients itself (accelerate's clip_grad_norm_ only reads the norm back), so
    --max_grad_norm goes into "gradient_clipping" (0: no clipping, as in the loop)."""
    for key, value in (
        ("train_micro_batch_size_per_gpu", micro_batch),
        ("gradient_accumulation_steps", accumulation),
        ("gradient_clipping", max_grad_norm),
    ):
        if config.get(key, "auto") == "auto":
            config[key] = value
    return config


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("true", "1", "yes")


# The Trainer's --fsdp words and --fsdp_config settings seqtune's FSDP2 does as asked (every block fully sharded)...
TRAINER_FSDP_WORDS = ("full_shard", "auto_wrap")
# ... and the --fsdp_config settings that tune FSDP1 or loading only (nothing to honour on CPUs).
FSDP_CONFIG_TUNING = (
    "min_num_params",
    "transformer_layer_cls_to_wrap",
    "state_dict_type",
    "backward_prefetch",
    "forward_prefetch",
    "use_orig_params",
    "sync_module_states",
    "limit_all_gathers",
    "cpu_ram_efficient_loading",
)


def _fsdp_words(value) -> list[str]:
    """The words of the Trainer's --fsdp ("full_shard auto_wrap", a list of them, or True)."""
    if value in (None, True, False):
        return []
    items = value.split() if isinstance(value, str) else list(value)
    return [str(getattr(item, "value", item)).strip().lower() for item in items if str(item).strip()]


def _fsdp_config(value) -> dict:
    """--fsdp_config as transformers reads it (a mapping, inline JSON or the path of a JSON file), keys without
    "fsdp_"."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise UserError(
                f"--fsdp_config (inline JSON) is not valid JSON: {error}. Fix: correct it, or pass the path of a "
                f"JSON file of FSDP settings."
            ) from None
    elif isinstance(value, str):
        path = os.path.abspath(os.path.expanduser(value))
        try:
            with open(path, encoding="utf-8") as handle:
                value = json.load(handle)
        except (OSError, ValueError) as error:
            raise UserError(
                f"--fsdp_config {value}: {path} cannot be read as JSON ({error}). Fix: pass the path of a JSON "
                f"object of FSDP settings, or drop --fsdp_config."
            ) from None
    if not isinstance(value, dict):
        raise UserError(f"--fsdp_config must be a JSON object of FSDP settings, got {type(value).__name__}.")
    return {key.removeprefix("fsdp_"): setting for key, setting in value.items()}


def trainer_fsdp(args, accelerator_present: bool) -> bool:
    """Whether the Trainer recipe shards with seqtune's FSDP2 (`seqtune.fsdp`): its --fsdp, or `accelerate launch
    --use_fsdp`, on a machine without GPUs, where transformers and accelerate would silently train with plain DDP
    (every process holding the whole model). Then the Trainer's own FSDP is switched off (--fsdp cleared,
    ACCELERATE_USE_FSDP removed) and what seqtune's FSDP2 does not do stops the run here, with one message. On GPUs
    (False) transformers runs --fsdp itself, as asked."""
    from_launcher = _env_flag("ACCELERATE_USE_FSDP")
    if not (args.fsdp or from_launcher) or accelerator_present:
        return False
    how = "--fsdp" if args.fsdp else "accelerate launch --use_fsdp"
    if from_launcher:
        os.environ.pop("ACCELERATE_USE_FSDP")
        check_launcher_fsdp_settings()
    fix = (
        'Fix: --fsdp "full_shard auto_wrap" (what seqtune does on CPUs: FSDP2, every block fully sharded), '
        "or run on GPUs, where transformers' FSDP takes every option."
    )
    unhonoured = [word for word in _fsdp_words(args.fsdp) if word not in TRAINER_FSDP_WORDS]
    if unhonoured:
        raise UserError(f"--fsdp {' '.join(unhonoured)} is not done by seqtune's FSDP on CPUs. {fix}")
    settings = _fsdp_config(args.fsdp_config) if args.fsdp_config else {}
    honoured = {
        "version": 2,
        "cpu_offload": False,
        "offload_params": False,
        "activation_checkpointing": False,
        "reshard_after_forward": True,
        "xla": False,
    }
    unhonoured = [
        f"{key}: {json.dumps(value)}"
        for key, value in settings.items()
        if key not in FSDP_CONFIG_TUNING and str(value).lower() != str(honoured.get(key, object())).lower()
    ]
    if unhonoured:
        raise UserError(f"--fsdp_config asks for {', '.join(unhonoured)}, not done by seqtune's FSDP on CPUs. {fix}")
    check_fsdp_combinations(args, how)
    args.fsdp, args.fsdp_config = None, None  # transformers' own FSDP stays off
    return True


def loop_deepspeed_plugin(args, accelerator_present: bool):
    """The Accelerate recipe's DeepSpeed plugin, or None for plain DDP.

    DeepSpeed comes from the loop's --deepspeed CONFIG or from `accelerate launch --use_deepspeed`
    (its --deepspeed_config_file, or accelerate's own --zero_stage flags); the config is checked as the
    Trainer script's is and the loop's batch size, accumulation and --max_grad_norm fill its "auto"
    values. On a machine without GPUs the processes first join on gloo (accelerate would otherwise
    drop DeepSpeed for plain DDP on CPUs), and DeepSpeed runs over that group, as with the Trainer.
    """
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "").strip()
    from_launcher = _env_flag("ACCELERATE_USE_DEEPSPEED")
    if args.deepspeed:
        value, flag = args.deepspeed, "--deepspeed"
    elif from_launcher and config_file and config_file.lower() != "none":
        value, flag = config_file, "--deepspeed_config_file"
    elif from_launcher:
        value, flag = None, "accelerate launch --use_deepspeed"
    else:
        return None
    from accelerate import PartialState
    from accelerate.utils import DeepSpeedPlugin

    settings = {
        "micro_batch": args.per_device_train_batch_size,
        "accumulation": args.gradient_accumulation_steps,
        "max_grad_norm": args.max_grad_norm,
    }
    if value is not None:
        plugin = DeepSpeedPlugin(hf_ds_config=fill_loop_auto_values(deepspeed_config(value, flag), **settings))
    else:  # accelerate's --zero_stage/--offload_* flags build the config
        require_deepspeed(flag)
        use_venv_extensions_dir()
        plugin = DeepSpeedPlugin()
        fill_loop_auto_values(plugin.deepspeed_config, **settings)
    if not accelerator_present:
        PartialState(cpu=True)  # the processes join on gloo; DeepSpeed's engine runs over that group
    return plugin


def loop_fsdp(args) -> bool:
    """Whether the Accelerate recipe shards with FSDP2 (`seqtune.fsdp`): its --fsdp, or `accelerate launch
    --use_fsdp` (or an accelerate config with FSDP). accelerate's own FSDP plugin is switched off
    (ACCELERATE_USE_FSDP removed): it would silently be DDP on CPUs, and seqtune shards the same way everywhere.
    What cannot be honoured with it stops here, before anything runs."""
    from_launcher = _env_flag("ACCELERATE_USE_FSDP")
    if from_launcher:
        os.environ.pop("ACCELERATE_USE_FSDP")
        logger.info("accelerate launch --use_fsdp: seqtune shards the model itself (FSDP2, fully_shard per block).")
    if not (args.fsdp or from_launcher):
        return False
    how = "--fsdp" if args.fsdp else "accelerate launch --use_fsdp"
    if from_launcher:
        check_launcher_fsdp_settings()
    check_fsdp_combinations(args, how)
    return True


def check_fsdp_combinations(args, how: str) -> None:
    """What seqtune's FSDP2 does not run with (either recipe), refused before anything runs."""
    if args.deepspeed or _env_flag("ACCELERATE_USE_DEEPSPEED"):
        raise UserError(f"{how} and DeepSpeed both shard the model: choose one. Fix: drop {how} or --deepspeed.")
    if args.fp16:
        raise UserError(
            f"{how} computes in fp32 or bf16, not fp16 (no loss scaling). Fix: use --bf16 instead of --fp16."
        )
    if args.torch_compile:
        raise UserError(f"{how} does not run with --torch_compile in seqtune yet. Fix: drop --torch_compile.")


def check_launcher_fsdp_settings() -> None:
    """accelerate launch's FSDP settings that seqtune's FSDP2 (every block fully sharded, resharded after its
    forward, weights on the device) does not honour stop the run rather than being dropped."""
    unhonoured = []
    if _env_flag("FSDP_OFFLOAD_PARAMS"):
        unhonoured.append("--fsdp_offload_params true (CPU offload)")
    strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").strip()
    if strategy.upper() not in ("FULL_SHARD", "1"):
        unhonoured.append(f"--fsdp_sharding_strategy {strategy}")
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip()
    if reshard.lower() not in ("true", "1", "full_shard"):
        unhonoured.append(f"--fsdp_reshard_after_forward {reshard}")
    if unhonoured:
        raise UserError(
            f"accelerate launch --use_fsdp asks for {' and '.join(unhonoured)}, which seqtune's FSDP (FSDP2, every "
            f"block fully sharded) does not do. Fix: drop it from the launch command or the accelerate config "
            f"(full sharding is the default)."
        )


# --------------------------------------------------------------------------- ZeRO on another number of processes
# DeepSpeed partitions the optimizer state (ZeRO-1/2) and the weights (ZeRO-3) by process: its load_checkpoint
# refuses a checkpoint of another data-parallel size ("Automatic adjustment of ZeRO's optimizer state partitioning
# with a new world size is not currently supported"). Its universal checkpoint format is not partitioned: seqtune
# converts the checkpoint's DeepSpeed folder with DeepSpeed's own converter (ds_to_universal) into a temporary view
# of the checkpoint (its other files linked, the checkpoint itself untouched) and loads that, with DeepSpeed's
# "load_universal" switched on. ZeRO-1/2 only: ZeRO-3's universal loader is not exact (resume_zero_elsewhere).

ZERO_RANK_FILE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def zero_processes(folder: str) -> int | None:
    """The number of processes a DeepSpeed ZeRO checkpoint folder (its tag folder) was written by, from its
    per-process optimizer files; None when it holds none."""
    if not os.path.isdir(folder):
        return None
    ranks = {int(match.group(1)) for match in map(ZERO_RANK_FILE.match, os.listdir(folder)) if match}
    return len(ranks) or None


def universal_view(checkpoint: str, tag: str, view: str, latest_file: str | None) -> str:
    """`view`: `checkpoint` with its DeepSpeed folder `tag` converted to DeepSpeed's universal format (under the
    same name, or `latest_file` naming it), every other file linked. Built by the main process; returns `view`."""
    import subprocess

    shutil.rmtree(view, ignore_errors=True)
    os.makedirs(view)
    converted = f"{tag}_universal" if latest_file else tag
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder"]
    command += [os.path.join(checkpoint, tag), "--output_folder", os.path.join(view, converted)]
    command += ["--num_extract_workers", "1", "--num_merge_workers", "1", "--inject_missing_state"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(view, ignore_errors=True)
        raise UserError(
            f"{checkpoint} was written by DeepSpeed on another number of processes and its conversion to DeepSpeed's "
            f"universal format failed:\n{(result.stdout + result.stderr)[-2000:]}\nFix: resume on the number of "
            f"processes it was written with."
        )
    for name in os.listdir(checkpoint):
        if name not in (tag, "latest", latest_file):
            os.symlink(os.path.abspath(os.path.join(checkpoint, name)), os.path.join(view, name))
    if latest_file:
        with open(os.path.join(view, latest_file), "w", encoding="utf-8") as handle:
            handle.write(converted)
    return view


def universal_view_path(output_dir: str, checkpoint: str) -> str:
    """Where `resume_zero_elsewhere` puts a checkpoint's universal view: a temporary folder of the output dir (a
    run killed before removing it leaves a leftover the next start cleans up)."""
    from .checkpoints import TEMPORARY_PREFIX

    return os.path.join(output_dir, f"{TEMPORARY_PREFIX}universal-{os.path.basename(os.path.normpath(checkpoint))}")


def resume_zero_elsewhere(config: dict, checkpoint: str, tag: str, processes: int, view: str, latest_file=None):
    """The folder to resume a ZeRO run from: `checkpoint` itself, or, when it was written on another number of
    processes, its universal view (`universal_view`, built on the main process while the others wait) with
    DeepSpeed's `config` told to load that format. Said in the log either way it changes."""
    from .runtime import barrier, is_main_process

    written = zero_processes(os.path.join(checkpoint, tag))
    if written is None or written == processes:
        return checkpoint
    if zero_stage(config) == 3:
        # DeepSpeed 0.19's universal loader for ZeRO-3 restores the weights but not AdamW's state exactly: resumed
        # on the same number of processes through it, a tiny T5 left the uninterrupted run's loss at the second
        # step after the resume and ended 2.7e-4 away from its weights (ZeRO-2: within 1.2e-7).
        # The Trainer's checkpoints also hold the gathered model (the Accelerate script's: DeepSpeed's state only).
        restart = (
            f", or start a new run from its weights (--model_name_or_path {checkpoint}, another --output_dir)"
            if os.path.isfile(os.path.join(checkpoint, "model.safetensors"))
            else ""
        )
        raise UserError(
            f"{checkpoint} holds DeepSpeed ZeRO-3 state of {written} process(es) and this run has {processes}: "
            f"DeepSpeed cannot load ZeRO-3 optimizer state on another number of processes exactly. Fix: resume on "
            f"{written} process(es){restart}; ZeRO-1/2 checkpoints resume on any number."
        )
    logger.info(
        "%s: DeepSpeed ZeRO state of %d process(es), this run has %d: converting it to DeepSpeed's universal "
        "checkpoint format (ds_to_universal) in %s, which loads on any number of processes.",
        checkpoint,
        written,
        processes,
        view,
    )
    failure = None
    if is_main_process():
        try:
            universal_view(checkpoint, tag, view, latest_file)
        except UserError as error:
            failure = error
    barrier()
    if failure is not None:
        raise failure
    if not os.path.isdir(view):  # the other processes learn of the main one's failure
        raise UserError(f"{checkpoint}: the main process could not convert its DeepSpeed state (see its message).")
    config.setdefault("checkpoint", {})["load_universal"] = True
    return view
