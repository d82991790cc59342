"""The Accelerate recipe: fine-tune a seq2seq model with an explicit PyTorch loop.

`main` reads top to bottom: set up (arguments, Accelerator, output dir, data, model: the
shared core, as the Trainer recipe), build the run (data loaders, optimizer, schedule,
resume), train (one epoch at a time, evaluating after each and every --eval_steps; a checkpoint
every --checkpointing_steps), save (final model, results, predictions), wrap up (report, card,
hub). The steps follow `main` in this file, in the order it calls them.

It runs with plain `python`, `accelerate launch` and `torchrun` (one CPU, several GPUs,
TPUs through xla_spawn's `_mp_fn`). Everything but the loop comes from the same core as
`run_summarization.py`, so flags, data checks, metrics and output files are the same.

Exact resume: a checkpoint is Accelerate's `save_state` (model, optimizer, schedule, the
RNG states of every process) plus `LoopState` (epoch, batches of it already seen, steps,
loss sum), written through `seqtune.checkpoints` (staging folder, manifest, one rename) as
`step_N` (--checkpointing_steps N) or `epoch_E` (--checkpointing_steps epoch), the Hugging Face
script's names.
The order of the training data depends only on --seed and the epoch (Accelerate's
seedable sampler), and the data loaders draw from their own generators, never from the
global RNG that dropout uses; so on resume `skip_first_batches` skips the batches already
seen (their indices only: nothing is loaded or run again) and the run continues bit for
bit as if it had never stopped (CPU, one process).

What differs from the Trainer recipe, on purpose: the loop always trains and evaluates
(`--do_predict` adds the test split); with --gradient_accumulation_steps > 1 each
micro-batch's mean loss counts equally (the Trainer weighs them by their label tokens).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from .. import adapters, checkpoints, fsdp
from ..arguments import DataArguments, LoopArguments, ModelArguments, parse_arguments
from ..batching import (
    LengthGroupedSampler,
    apply_global_batch_size,
    global_batch_size,
    log_resume_layout,
    token_lengths,
)
from ..data import build_collator
from ..errors import UserError, exit_on_user_error
from ..generation import (
    GenerationTotals,
    evaluate_in_windows,
    generate_with_loss,
    length_sorted,
    predict_to_file,
)
from ..hub import HubPusher
from ..metrics import decode_token_ids
from ..outputs import arguments_as_dict
from ..precision import check_loss_is_finite, mixed_precision_name, warn_fp16_overflow
from ..progress import Progress
from ..report import RunLog
from ..runtime import accelerator_available, is_main_process, setup_logging
from ..sharding import loop_deepspeed_plugin, loop_fsdp, resume_zero_elsewhere, universal_view_path
from ..streaming import EvaluationStream, TrainingStream
from ..tasks import SUMMARIZATION, Task, task_of
from ..xla import cpu_state_dict
from .common import (
    RunSetup,
    generation_settings,
    record_results,
    set_up_run,
    stream_metrics,
    training_stream,
    wrap_up_run,
)

logger = logging.getLogger(__name__)

# Parameters without weight decay: biases and normalisation weights (the Trainer's rule).
NO_DECAY_NAME_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


@exit_on_user_error
def main(argv: list[str] | None = None, task: Task = SUMMARIZATION) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    prog = task.loop_script
    model_args, data_args, args = parse_arguments((ModelArguments, task.data_arguments, LoopArguments), argv, prog=prog)
    setup_logging()
    logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())
    checkpoints.check_accelerate_checkpoint(args.resume_from_checkpoint, prog)
    accelerator = build_accelerator(args, prog, streaming=data_args.streaming)
    hub = HubPusher.from_arguments(args, model_args)  # --push_to_hub: checked in set_up_run, before anything
    setup = set_up_run(
        model_args, data_args, args, command=[prog, *argv], main_process_first=accelerator.main_process_first, hub=hub
    )
    warn_fp16_overflow(setup.model.config.model_type, accelerator.mixed_precision)
    checkpoints.check_accelerate_checkpoint(setup.resume_from, prog)  # the newest one in --output_dir

    load_from = zero_resume_point(accelerator, args, setup.resume_from)  # before DeepSpeed starts (build_run)
    run = build_run(accelerator, args, data_args, setup)
    if setup.resume_from:
        resume(run, setup.resume_from, load_from)
    start_logging(run, args, [model_args, data_args, args])
    started = time.time()
    eval_metrics = train(run, args, hub)
    train_metrics = training_metrics(run, time.time() - started, setup.tokenize_runtime)

    model_files = adapters.save_final(  # --use_peft: the adapter folder (and --merge_adapter's merged model)
        lambda folder: save_model(run, folder), run.model, run.tokenizer, model_args, args.output_dir
    )
    results: dict = {}
    run.log.append({**train_metrics, "step": run.state.completed_steps})
    for split, metrics in (("train", train_metrics), ("eval", eval_metrics)):
        record_results(args.output_dir, split, metrics, results)
    if args.do_predict:
        logger.info("*** Predict ***")
        metrics = predict(run, setup.eval_streams.get("test") or run.splits["test"], args)
        run.log.append({**metrics, "event": "predict", "step": run.state.completed_steps})
        record_results(args.output_dir, "predict", metrics, results)
    if run.tracking:
        accelerator.end_training()
    wrap_up_run(
        model_args,
        data_args,
        args,
        setup=setup,
        results=results,
        hyperparameters={
            "num_train_epochs": run.num_train_epochs,
            "max_train_steps": run.max_train_steps,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
        },
        command=[prog, *argv],
        trainer=f"Accelerate loop, {accelerator.num_processes} process(es)",
        model_files=model_files,
        hub=hub,  # --push_to_hub: the final push, after the card
    )
    return results


def _mp_fn(index: int) -> None:
    """Entry point for xla_spawn.py (one call per TPU core)."""
    main()


# --------------------------------------------------------------------------- set up


class _TiedWeightsNote(logging.Filter):
    """save_state stores tied weights (T5's shared embeddings) once and warns about it at every
    checkpoint; load_state ties them again (the resume tests compare every tensor)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


def build_accelerator(args: LoopArguments, prog: str, streaming: bool = False):
    from accelerate import Accelerator, DataLoaderConfiguration

    trackers = _trackers(args)
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's and accelerate launch's process count
    apply_global_batch_size(args, launched)
    # --fsdp or `accelerate launch --use_fsdp`: seqtune shards with FSDP2 itself (build_run), accelerate's plugin off.
    args.fsdp = loop_fsdp(args)
    # --deepspeed or `accelerate launch --use_deepspeed`: DeepSpeed ZeRO (None: DDP, or FSDP2 with --fsdp).
    deepspeed = loop_deepspeed_plugin(args, accelerator_available())
    accelerator = Accelerator(
        # No GPU: say "cpu", or under torchrun every process would train on its own (gloo needs it).
        cpu=not accelerator_available() and deepspeed is None,
        deepspeed_plugin=deepspeed,
        # --fp16/--bf16; without them, `accelerate launch --mixed_precision` (or its config) decides.
        mixed_precision=mixed_precision_name(args.fp16, args.bf16) if (args.fp16 or args.bf16) else None,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        # The training order depends on --seed and the epoch only, on every process.
        # A stream (--streaming) is read whole by every process, each keeping its part of every batch
        # (dispatching batches from the main process fails on batches of different widths).
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=args.seed, dispatch_batches=False if streaming else None
        ),
        # One schedule step per optimizer step, whatever the number of processes (as the Trainer).
        step_scheduler_with_optimizer=False,
        log_with=trackers,
        project_dir=args.output_dir if trackers else None,
        dynamo_plugin=_compile_settings(args),
    )
    logger.info("%s on %d process(es), device %s.", prog, accelerator.num_processes, accelerator.device)
    if args.global_batch_size and accelerator.num_processes != launched:  # started another way (xla_spawn)
        apply_global_batch_size(args, accelerator.num_processes)
        accelerator.gradient_accumulation_steps = args.gradient_accumulation_steps
    if args.fsdp and accelerator.mixed_precision == "fp16":
        raise UserError("--fsdp computes in fp32 or bf16, not fp16 (no loss scaling). Fix: use --bf16 instead.")
    if args.torch_compile:
        logger.info(
            "torch.compile: backend %s, mode %s (the first steps compile).",
            accelerator.state.dynamo_plugin.backend,
            args.torch_compile_mode or "default",
        )
    return accelerator


def _trackers(args: LoopArguments) -> str | list[str] | None:
    if not args.with_tracking or args.report_to.strip().lower() in ("none", ""):
        return None
    names = [name.strip() for name in args.report_to.split(",") if name.strip()]
    return "all" if names == ["all"] else names


def _compile_settings(args: LoopArguments):
    """Accelerate's torch.compile settings for --torch_compile (None: eager, unless `accelerate config` says so)."""
    if not args.torch_compile:
        return None
    from accelerate.utils import TorchDynamoPlugin

    # Length-grouped batches change shape every step: compile for dynamic shapes at once
    # instead of recompiling for the first few widths.
    return TorchDynamoPlugin(
        backend=args.torch_compile_backend or "inductor", mode=args.torch_compile_mode, dynamic=True
    )


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint (Accelerate's register_for_checkpointing)."""

    epoch: int = 0  # the epoch in progress
    batches_seen: int = 0  # batches of that epoch already trained on (this process's share)
    completed_steps: int = 0  # optimizer steps
    loss_sum: float = 0.0  # sum over optimizer steps of the step's loss (mean over processes)
    total_flos: float = 0.0  # floating-point operations of all processes (the Trainer's estimate)
    steps_without_loss: int = 0  # steps taken before a switch from the no_trainer script (loss not known)
    stream: dict | None = None  # --streaming: where the training stream resumes (TrainingStream.position_at)
    processes: int | None = None  # how the run that saved it batched (None: a checkpoint of an older seqtune)
    accumulation: int | None = None
    total_batch: int | None = None

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class LoopRun:
    """Everything the loop works with, built once by `build_run` (model and loaders prepared by Accelerate)."""

    task: Task
    accelerator: Any
    model: Any
    model_type: str | None  # "t5", "bart", ...: named in the message of a non-finite loss
    tokenizer: Any
    optimizer: Any
    lr_scheduler: Any
    splits: dict
    collator: Any
    train_loader: Any
    eval_loader: Any
    state: LoopState
    log: RunLog
    generation: dict
    total_batch: int  # examples per optimizer step, all processes together
    eval_batch_size: int  # --per_device_eval_batch_size
    steps_per_epoch: int
    max_train_steps: int
    num_train_epochs: int
    flos_per_input_token: float
    tracking: bool
    stream: TrainingStream | None = None  # --streaming: the training examples, read as training goes
    fsdp: bool = False  # --fsdp: the model is sharded with FSDP2 (seqtune.fsdp), its state saved with DCP
    eval_stream: EvaluationStream | None = None  # --streaming: the validation split, read at each evaluation
    last_evaluation: tuple[int, dict] | None = None  # (step, metrics) of the last evaluation
    steps_this_run: int = 0  # optimizer steps taken since this process started (for throughput)


def build_run(accelerator, args: LoopArguments, data_args: DataArguments, setup: RunSetup) -> LoopRun:
    """Data loaders, optimizer and schedule, prepared by Accelerate; the state every checkpoint saves."""
    from transformers import get_scheduler

    model = setup.model
    splits = {name: _model_inputs_only(dataset, model) for name, dataset in setup.tokenized.items()}
    collator = build_collator(setup.tokenizer, model, data_args, 8 if accelerator.mixed_precision != "no" else None)
    total_batch = global_batch_size(
        args.per_device_train_batch_size, accelerator.num_processes, args.gradient_accumulation_steps
    )
    order = "random" if args.train_sampling_strategy == "random" else "group_by_length"
    stream = training_stream(setup, data_args, group_size=total_batch, seed=args.seed, order=order)
    train_loader, eval_loader = build_data_loaders(splits, collator, args, total_batch, stream)
    eval_stream = setup.eval_streams.get("validation")  # --streaming: read window by window at each evaluation
    if args.fsdp:
        model = fsdp.shard_for_training(model, accelerator.device, bf16=accelerator.mixed_precision == "bf16")
    optimizer = build_optimizer(model, args, accelerator.device)  # after sharding: on the shards
    if args.fsdp:  # accelerate must neither wrap the sharded model (DDP) nor save its optimizer (DCP does)
        from accelerate.optimizer import AcceleratedOptimizer

        train_loader, eval_loader = accelerator.prepare(train_loader, eval_loader)
        optimizer = AcceleratedOptimizer(optimizer, device_placement=False)  # steps once accumulation is complete
    else:
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    # A stream is one long epoch of --max_train_steps (check_streaming made sure it is given).
    steps_per_epoch = (
        args.max_train_steps if stream else math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    )
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    lr_scheduler = accelerator.prepare(
        get_scheduler(
            args.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=args.num_warmup_steps,
            num_training_steps=max_train_steps,
        )
    )
    state = LoopState(
        processes=accelerator.num_processes, accumulation=args.gradient_accumulation_steps, total_batch=total_batch
    )
    accelerator.register_for_checkpointing(state)
    if accelerator.state.deepspeed_plugin is not None:
        # Prepared apart from the model, the schedule is in neither DeepSpeed's checkpoint nor accelerate's
        # (it skips DeepSpeed's scheduler wrapper): a resumed run restarted its learning-rate schedule.
        accelerator.register_for_checkpointing(lr_scheduler)
    adapters.register_checkpoint_hooks(accelerator)  # a LoRA model's checkpoints hold its adapter only
    return LoopRun(
        task=task_of(data_args),
        accelerator=accelerator,
        model=model,
        model_type=setup.model.config.model_type,
        tokenizer=setup.tokenizer,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        splits=splits,
        collator=collator,
        train_loader=train_loader,
        eval_loader=eval_loader,
        state=state,
        log=RunLog(args.output_dir),
        generation={k: v for k, v in generation_settings(data_args).items() if v is not None},
        total_batch=total_batch,
        eval_batch_size=args.per_device_eval_batch_size,
        steps_per_epoch=steps_per_epoch,
        max_train_steps=max_train_steps,
        num_train_epochs=math.ceil(max_train_steps / steps_per_epoch),
        # The Trainer's estimate of the work: 6 x input tokens x parameters (embeddings excluded).
        flos_per_input_token=6.0 * accelerator.unwrap_model(model).num_parameters(exclude_embeddings=True),
        tracking=_trackers(args) is not None,
        stream=stream,
        fsdp=args.fsdp,
        eval_stream=eval_stream,
    )


def _model_inputs_only(dataset, model):
    """Drop columns the model's forward() does not take (e.g. token_type_ids of some tokenizers)."""
    accepted = set(inspect.signature(model.forward).parameters)
    return dataset.remove_columns([name for name in dataset.column_names if name not in accepted])


def build_data_loaders(
    splits: dict, collator, args: LoopArguments, group_size: int, stream=None
) -> tuple[DataLoader, DataLoader | None]:
    """Training loader in length-grouped (or random) order, or over the stream; evaluation loader longest first
    (None for a streamed validation split).

    Every loader has its own generator: the global RNG is left to dropout, so a resumed run
    draws the same random numbers as an uninterrupted one.
    """
    if stream is not None:  # the stream orders its blocks itself
        order: dict = {}
    elif args.train_sampling_strategy == "group_by_length":
        order = {"sampler": LengthGroupedSampler(token_lengths(splits["train"]), group_size, args.seed)}
    else:
        order = {"shuffle": True}
    train_loader = DataLoader(
        stream if stream is not None else splits["train"],
        collate_fn=collator,
        batch_size=args.per_device_train_batch_size,
        generator=torch.Generator().manual_seed(args.seed),  # not the global RNG, even for a stream (see above)
        **order,
    )
    if "validation" not in splits:  # --streaming: the validation split is read at each evaluation (`evaluate`)
        return train_loader, None
    eval_loader = DataLoader(  # longest first, similar lengths together: less padding
        length_sorted(splits["validation"]),
        collate_fn=collator,
        batch_size=args.per_device_eval_batch_size,
        generator=torch.Generator(),
    )
    return train_loader, eval_loader


def build_optimizer(model, args: LoopArguments, device) -> torch.optim.Optimizer:
    """AdamW with weight decay on all but biases and norms: the Trainer's default optimizer."""
    from transformers.trainer_pt_utils import get_parameter_names

    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], NO_DECAY_NAME_PATTERNS))
    parameters = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for name, p in parameters if name in decay], "weight_decay": args.weight_decay},
        {"params": [p for name, p in parameters if name not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.learning_rate, fused=device.type in ("cpu", "cuda"))


def zero_resume_point(accelerator, args: LoopArguments, checkpoint: str | None) -> str | None:
    """The folder DeepSpeed's state is loaded from on resume: `checkpoint`, or, when its ZeRO state is of another
    number of processes, a view of it in DeepSpeed's universal format (`sharding.resume_zero_elsewhere`; the
    plugin's config is told before DeepSpeed starts)."""
    plugin = accelerator.state.deepspeed_plugin
    if checkpoint is None or plugin is None:
        return checkpoint
    view = universal_view_path(args.output_dir, checkpoint)
    # accelerate's save_state writes DeepSpeed's state under the tag "pytorch_model" (its MODEL_NAME)
    return resume_zero_elsewhere(plugin.deepspeed_config, checkpoint, "pytorch_model", accelerator.num_processes, view)


def resume(run: LoopRun, checkpoint: str, load_from: str | None = None) -> None:
    """Continue from `checkpoint` (its state read from `load_from`, a universal view of it, when given)."""
    logger.info("Resuming from %s.", checkpoint)
    fsdp.check_same_sharding(checkpoint, run.fsdp)
    load_from = load_from or checkpoint
    if os.path.isfile(os.path.join(checkpoint, "custom_checkpoint_0.pkl")):
        run.accelerator.load_state(load_from)
        if run.fsdp:
            fsdp.load_sharded(run.model, run.optimizer.optimizer, checkpoint)
    else:
        _resume_from_no_trainer_script(run, checkpoint, load_from)
    if load_from != checkpoint:  # a ZeRO checkpoint's universal view: loaded, no longer needed
        run.accelerator.wait_for_everyone()
        if run.accelerator.is_main_process:
            shutil.rmtree(load_from, ignore_errors=True)
    state = run.state
    continue_batching(run)
    if run.stream is not None:
        run.stream.resume(state.stream)
    logger.info(
        "Resumed at step %d (epoch %d, %d batches into it).", state.completed_steps, state.epoch, state.batches_seen
    )


def continue_batching(run: LoopRun) -> None:
    """A checkpoint saved on another number of processes (elastic resume): each process's position in the
    epoch is counted in its own batches, so it is recomputed from the optimizer steps taken (a checkpoint is
    written between steps). The same global batch (--global_batch_size) keeps the data order: step k reads the
    same examples on any number of processes; a different one is said, and training goes on with it."""
    state, accelerator = run.state, run.accelerator
    saved = (state.processes, state.accumulation, state.total_batch)
    here = (accelerator.num_processes, accelerator.gradient_accumulation_steps, run.total_batch)
    if saved[0] is not None and saved != here:
        steps_into_epoch = state.batches_seen // saved[1]
        state.batches_seen = steps_into_epoch * here[1]
        log_resume_layout(saved, here, f"{steps_into_epoch} steps into epoch {state.epoch}")
    state.processes, state.accumulation, state.total_batch = here


def _resume_from_no_trainer_script(run: LoopRun, checkpoint: str, load_from: str) -> None:
    """A checkpoint of the Hugging Face no_trainer script (`checkpoints.check_accelerate_checkpoint` let it in):
    save_state without LoopState, which that script keeps in the folder's name. Load it with LoopState
    unregistered (load_state loads every registered object and would miss its pickle), then work out the
    position from the name as that script does."""
    accelerator, state = run.accelerator, run.state
    registered = accelerator._custom_objects
    accelerator._custom_objects = [obj for obj in registered if obj is not state]
    try:
        accelerator.load_state(load_from)
    finally:
        accelerator._custom_objects = registered
    name = os.path.basename(os.path.normpath(checkpoint))
    number = int(name.rsplit("_", 1)[1])
    accumulation = accelerator.gradient_accumulation_steps
    if name.startswith(checkpoints.EPOCH_PREFIX):  # epoch_E: epochs 0..E done
        state.epoch, state.completed_steps, state.batches_seen = number + 1, (number + 1) * run.steps_per_epoch, 0
    else:  # step_N
        state.completed_steps = number
        state.epoch = number // run.steps_per_epoch
        state.batches_seen = (number % run.steps_per_epoch) * accumulation
    state.loss_sum, state.total_flos, state.steps_without_loss = 0.0, 0.0, state.completed_steps
    logger.info(
        "%s was written by the Hugging Face no_trainer script (no seqtune position in it): resuming at step %d as "
        "its name says; the training loss before the switch is not known (train_loss averages the steps "
        "from here on).",
        name,
        state.completed_steps,
    )


def start_logging(run: LoopRun, args: LoopArguments, arguments: list) -> None:
    """The run log (log_history.jsonl, for the report) and, with --with_tracking, the trackers."""
    run.log.start(run.state.completed_steps)
    if run.tracking:
        config = arguments_as_dict(arguments)
        run.accelerator.init_trackers(
            f"{run.task.name}_no_trainer", {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}
        )
    logger.info("***** Training *****")
    logger.info(
        "  examples = %s, epochs = %d, batch size (all processes, accumulated) = %d, optimizer steps = %d",
        len(run.splits["train"]) if run.stream is None else "a stream (--streaming)",
        run.num_train_epochs,
        run.total_batch,
        run.max_train_steps,
    )


# --------------------------------------------------------------------------- train


class StepTotals:
    """Each optimizer step's loss (mean over micro-batches), flos and count, added up on the device.

    They reach `LoopState` only at logging and checkpoint steps (`flush`): no other step waits for
    a host synchronisation or a collective.
    """

    def __init__(self, accelerator, state: LoopState):
        self.accelerator, self.state = accelerator, state
        self.unflushed = torch.zeros(3, dtype=torch.float64, device=accelerator.device)

    def add_step(self, mean_loss: torch.Tensor, flos: float) -> None:
        device = self.accelerator.device
        self.unflushed += torch.stack(
            [
                mean_loss.double(),
                torch.tensor(flos, dtype=torch.float64, device=device),
                torch.ones((), dtype=torch.float64, device=device),
            ]
        )

    def flush(self) -> float:
        """Add the unflushed steps to the state (summed over processes); return their mean loss."""
        loss_sum, flos_sum, steps = self.accelerator.reduce(self.unflushed, reduction="sum").tolist()
        steps /= self.accelerator.num_processes
        loss_sum /= self.accelerator.num_processes  # each step's loss: the mean over processes
        self.state.loss_sum += loss_sum
        self.state.total_flos += flos_sum
        self.unflushed.zero_()
        return loss_sum / max(steps, 1)


def train(run: LoopRun, args: LoopArguments, hub: HubPusher | None) -> dict:
    """Train up to --max_train_steps, evaluating after every epoch (and every --eval_steps); return the last
    evaluation's metrics."""
    bar = Progress(run.max_train_steps, "Training", unit="step", initial=run.state.completed_steps)
    totals = StepTotals(run.accelerator, run.state)
    eval_metrics: dict = {}
    for epoch in range(run.state.epoch, run.num_train_epochs):
        if run.state.completed_steps >= run.max_train_steps:
            break
        train_one_epoch(run, args, epoch, totals, bar, hub)
        eval_metrics = evaluate_and_log(run, epoch)
        if args.checkpointing_steps == "epoch":
            totals.flush()
            save_checkpoint(run, args, hub, f"{checkpoints.EPOCH_PREFIX}{epoch}")
    bar.close()
    totals.flush()
    return eval_metrics or evaluate(run)  # resumed from a checkpoint after the last step: evaluate once


def evaluate_and_log(run: LoopRun, epoch: int) -> dict:
    """Evaluate (once per step: the end of an epoch may also be an --eval_steps step) and log the metrics."""
    step = run.state.completed_steps
    if run.last_evaluation is not None and run.last_evaluation[0] == step:
        return run.last_evaluation[1]
    metrics = evaluate(run)
    scores = {f"eval_{name}" for name in run.task.scorer.names}
    scored = "  ".join(f"{k}={v}" for k, v in metrics.items() if k in scores)
    logger.info("epoch %d: %s  (step %d)", epoch, scored, step)
    run.accelerator.log(metrics, step=step)
    run.log.append({**metrics, "step": step})
    run.last_evaluation = (step, metrics)
    return metrics


def train_one_epoch(
    run: LoopRun, args: LoopArguments, epoch: int, totals: StepTotals, bar: Progress, hub: HubPusher | None
) -> None:
    """The rest of `epoch` (from the batch a resumed run stopped at), or up to --max_train_steps."""
    accelerator, state = run.accelerator, run.state
    run.model.train()
    run.train_loader.set_epoch(epoch)  # the order of this epoch (seed + epoch), resumed or not
    batches = run.train_loader
    if state.batches_seen and run.stream is None:  # a stream resumes at its checkpoint's position itself
        batches = accelerator.skip_first_batches(run.train_loader, state.batches_seen)
    accumulated_loss = torch.zeros((), device=accelerator.device)
    micro_batches, flos = 0, 0.0
    for batch in batches:
        loss = training_step(run, args, batch)
        state.batches_seen += 1
        accumulated_loss += loss.detach().float()
        micro_batches += 1
        flos += run.flos_per_input_token * batch["input_ids"].numel()
        if not accelerator.sync_gradients:
            continue
        # One optimizer step done.
        if not accelerator.optimizer_step_was_skipped:
            run.lr_scheduler.step()
        totals.add_step(accumulated_loss / micro_batches, flos)
        accumulated_loss.zero_()
        micro_batches, flos = 0, 0.0
        state.completed_steps += 1
        run.steps_this_run += 1
        bar.update(1)
        log_and_checkpoint(run, args, epoch, totals, bar, hub)
        if state.completed_steps >= run.max_train_steps:
            if run.stream is None and state.batches_seen >= len(
                run.train_loader
            ):  # its last step: the epoch ran to its end as well,
                state.epoch, state.batches_seen = epoch + 1, 0  # so epoch_E resumes at epoch E + 1
            return
    state.epoch, state.batches_seen = epoch + 1, 0  # the epoch ran to its end


def training_step(run: LoopRun, args: LoopArguments, batch: dict) -> torch.Tensor:
    """Forward and backward of one micro-batch; the optimizer steps once the accumulation is complete."""
    accelerator = run.accelerator
    with accelerator.accumulate(run.model):
        loss = run.model(**batch).loss
        accelerator.backward(loss)
        # NaN/inf on any process: every process stops here, before the optimizer step.
        check_loss_is_finite(
            loss,
            run.state.completed_steps + 1,
            mixed_precision=accelerator.mixed_precision,
            model_type=run.model_type,
            learning_rate=args.learning_rate,
            output_dir=args.output_dir,
        )
        if accelerator.sync_gradients and args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(run.model.parameters(), args.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad()
    return loss


def log_and_checkpoint(
    run: LoopRun, args: LoopArguments, epoch: int, totals: StepTotals, bar: Progress, hub: HubPusher | None
) -> None:
    """After an optimizer step: log the loss every --logging_steps, evaluate every --eval_steps, checkpoint every
    --checkpointing_steps."""
    step = run.state.completed_steps
    if step % args.logging_steps == 0 or step == run.max_train_steps:
        interval_loss = totals.flush()  # mean loss since the last log, as the Trainer logs it
        learning_rate = run.lr_scheduler.get_last_lr()[0]
        bar.set_postfix(loss=interval_loss, lr=learning_rate)
        bar.write(
            f"step {step}/{run.max_train_steps}  epoch {epoch}  loss {interval_loss:.4f}  "
            f"learning rate {learning_rate:.3e}"
        )
        run.accelerator.log({"train_loss": interval_loss, "learning_rate": learning_rate, "epoch": epoch}, step=step)
        run.log.append({"step": step, "epoch": epoch, "loss": interval_loss, "learning_rate": learning_rate})
    if args.eval_steps and step % args.eval_steps == 0:  # before the checkpoint of the same step
        evaluate_and_log(run, epoch)
        run.model.train()
    if args.checkpoint_every and step % args.checkpoint_every == 0:
        totals.flush()  # the checkpoint holds every step's loss
        save_checkpoint(run, args, hub, f"{checkpoints.STEP_PREFIX}{step}")


def save_checkpoint(run: LoopRun, args: LoopArguments, hub: HubPusher | None, name: str) -> None:
    """Checkpoint `name`: step_N (N the global step) or epoch_E (E the 0-based epoch just finished), the names
    the Hugging Face no_trainer script gives them; the manifest records the step, which orders them."""
    if run.stream is not None:
        run.state.stream = run.stream.position_at(run.state.completed_steps * run.total_batch)
    write_shards = (lambda staged: fsdp.save_sharded(run.model, run.optimizer.optimizer, staged)) if run.fsdp else None
    checkpoints.save_accelerate_checkpoint(
        run.accelerator,
        args.output_dir,
        run.state.completed_steps,
        args.save_total_limit,
        hub,
        name=name,
        write_more=write_shards,
    )


# --------------------------------------------------------------------------- evaluate and predict


def generate_batches(run: LoopRun, loader, totals: GenerationTotals, bar: Progress) -> list[str]:
    """Loss and generation over a prepared data loader, gathered so that every example counts once;
    returns the decoded predictions in the loader's order.

    One encoder pass per batch serves the loss and `generate`; each batch is decoded and scored
    as it comes, so memory stays flat in the number of examples.
    """
    run.model.eval()
    unwrapped = run.accelerator.unwrap_model(run.model)
    if run.fsdp:  # the whole-model group gathered for the evaluation only
        fsdp.prepare_for_generation(unwrapped)
    try:
        predictions = _generate_and_score(run, unwrapped, loader, totals, bar)
    finally:
        if run.fsdp:
            fsdp.end_generation(unwrapped)
    if len(predictions) != len(loader.dataset):
        raise RuntimeError(f"generation covered {len(predictions)} examples of {len(loader.dataset)}")
    return predictions


def _generate_and_score(run: LoopRun, unwrapped, loader, totals: GenerationTotals, bar: Progress) -> list[str]:
    """generate_batches' loop: each batch generated, gathered across processes, decoded and scored."""
    accelerator, tokenizer = run.accelerator, run.tokenizer
    predictions: list[str] = []
    for batch in loader:
        generated, loss = generate_with_loss(unwrapped, batch, run.generation)
        # Batches differ in width across processes: pad before gathering. gather_for_metrics drops
        # the examples the sampler repeated to give every process a full last batch.
        generated = accelerator.pad_across_processes(generated, dim=1, pad_index=tokenizer.pad_token_id)
        labels = accelerator.pad_across_processes(batch["labels"], dim=1, pad_index=-100)
        generated, labels, loss = accelerator.gather_for_metrics((generated, labels, loss))
        generated = generated.cpu().numpy()
        decoded = decode_token_ids(generated, tokenizer)
        totals.scorer.add(decoded, decode_token_ids(labels.cpu().numpy(), tokenizer), generated, tokenizer.pad_token_id)
        totals.losses.append(loss.cpu())
        totals.batches += 1
        predictions.extend(decoded)
        bar.update(1)
    return predictions


def window_generator(run: LoopRun, batch_size: int, bar: Progress):
    """generate_window(subset, totals) for seqtune.generation's windows: a prepared loader over `subset`."""

    accelerator = run.accelerator

    def generate_window(subset, totals: GenerationTotals) -> list[str]:
        loader = DataLoader(subset, collate_fn=run.collator, batch_size=batch_size, generator=torch.Generator())
        # Sharded over the processes as `prepare` does, but not kept: the Accelerator holds on to every loader
        # it prepares (a window each: memory would grow with the test set) and saves their samplers in every
        # checkpoint (an evaluation during training would change what a checkpoint holds).
        prepared = accelerator.prepare_data_loader(loader)
        accelerator._dataloaders.remove(prepared)
        return generate_batches(run, prepared, totals, bar)

    return generate_window


def evaluate(run: LoopRun) -> dict:
    """eval_loss, the task's scores (eval_rouge*, eval_bleu, ...), eval_gen_len, runtimes, eval_samples and
    epoch, over the (length-sorted) eval loader, or the streamed validation split window by window."""
    if run.eval_stream is not None:
        bar = Progress(None, "Evaluating", unit="batch", leave=False)
        on_cpu = run.accelerator.device.type == "cpu"
        generate_window = window_generator(run, run.eval_batch_size, bar)
        metrics = evaluate_in_windows(run.eval_stream, generate_window, run.task.scorer(), "eval", on_cpu)
    else:
        totals = GenerationTotals(run.task.scorer())
        bar = Progress(len(run.eval_loader), "Evaluating", unit="batch", leave=False)
        generate_batches(run, run.eval_loader, totals, bar)
        metrics = totals.metrics("eval")
    bar.close()
    metrics["epoch"] = round(run.state.completed_steps / run.steps_per_epoch, 4)
    return metrics


def predict(run: LoopRun, source, args: LoopArguments) -> dict:
    """predict_* metrics; generated_predictions.txt written in input order as generated (seqtune.generation).
    `source`: the tokenized test split, or (--streaming) its EvaluationStream."""
    accelerator, batch_size = run.accelerator, args.per_device_eval_batch_size
    total = math.ceil(len(source) / (batch_size * accelerator.num_processes)) if hasattr(source, "__len__") else None
    bar = Progress(total, "Predicting", unit="batch")
    on_cpu = accelerator.device.type == "cpu"
    generate_window = window_generator(run, batch_size, bar)
    metrics = predict_to_file(source, generate_window, args.output_dir, run.task.scorer(), on_cpu=on_cpu)
    bar.close()
    return metrics


# --------------------------------------------------------------------------- save


def training_metrics(run: LoopRun, runtime: float, tokenize_runtime: float) -> dict:
    state, steps = run.state, run.steps_this_run
    return {
        "train_loss": state.loss_sum / max(state.completed_steps - state.steps_without_loss, 1),
        "train_runtime": round(runtime, 4),
        "train_samples_per_second": round(steps * run.total_batch / max(runtime, 1e-9), 3),
        "train_steps_per_second": round(steps / max(runtime, 1e-9), 3),
        "epoch": round(state.completed_steps / run.steps_per_epoch, 4),
        "total_flos": state.total_flos,
        "train_samples": len(run.splits["train"]) if run.stream is None else state.completed_steps * run.total_batch,
        "tokenize_runtime": tokenize_runtime,
        **stream_metrics(run.stream),
    }


def save_model(run: LoopRun, folder: str) -> None:
    """The final model and tokenizer, as save_pretrained writes them (loadable by from_pretrained)."""
    accelerator = run.accelerator
    unwrapped = accelerator.unwrap_model(run.model)
    if run.fsdp:  # gathered on the main process only, into its CPU memory
        state_dict = fsdp.full_state_dict(run.model)
    else:
        state_dict = cpu_state_dict(accelerator.get_state_dict(run.model))  # every process (gathers sharded weights)
    state_dict = state_dict or {}  # DeepSpeed ZeRO-3 and FSDP gather the weights on the main process only
    # --torch_compile: the compiled wrapper names every weight "_orig_mod.<name>".
    state_dict = {name.removeprefix("_orig_mod."): tensor for name, tensor in state_dict.items()}
    unwrapped.save_pretrained(
        folder, is_main_process=is_main_process(), save_function=accelerator.save, state_dict=state_dict
    )
    if is_main_process():
        run.tokenizer.save_pretrained(folder)


if __name__ == "__main__":
    main()
