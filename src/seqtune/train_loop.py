"""The Accelerate recipe: fine-tune a seq2seq model with an explicit PyTorch loop.

The whole loop is here, readable top to bottom, in phases:

1. setup     arguments, Accelerator, output dir, data, model (the shared core, as the
             Trainer recipe), data loaders, optimizer, schedule, resume
2. train     one epoch at a time; a checkpoint every --checkpointing_steps
3. evaluate  after every epoch: generate, gather across processes, ROUGE
4. save      final model + tokenizer, predictions, results, model card

It runs with plain `python`, `accelerate launch` and `torchrun` (one CPU, several GPUs,
TPUs through xla_spawn's `_mp_fn`). Everything but the loop comes from the same core as
`run_summarization.py`, so flags, data checks, metrics and output files are the same.

Exact resume: a checkpoint is Accelerate's `save_state` (model, optimizer, schedule, the
RNG states of every process) plus `TrainingProgress` (epoch, batches of it already seen,
steps, loss sum), written through `seqtune.checkpoints` (staging folder, manifest, one
rename). The order of the training data depends only on --seed and the epoch
(Accelerate's seedable sampler), and the data loaders draw from their own generators,
never from the global RNG that dropout uses; so on resume `skip_first_batches` skips the
batches already seen (their indices only: nothing is loaded or run again) and the run
continues bit for bit as if it had never stopped (CPU, one process).

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
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from . import checkpoints
from .arguments import DataArguments, ModelArguments, parse_arguments
from .data import LengthGroupedSampler, build_collator, token_lengths
from .errors import UserError, exit_on_user_error
from .hub import HubPusher
from .generation import (GenerationTotals, generate_with_loss, length_sorted, length_sorted_windows, restore_order,
                         return_large_buffers_to_os)
from .metrics import decode_token_ids
from .outputs import PREDICTIONS_FILE, arguments_as_dict, save_final_model, write_predictions
from .pipeline import finish, generation_settings, record_results, set_up_run
from .progress import Progress
from .report import RunLog
from .precision import (
    accelerator_available,
    check_loss_is_finite,
    check_mixed_precision,
    mixed_precision_name,
    warn_fp16_overflow,
)
from .runtime import is_main_process, setup_logging
from .xla import cpu_state_dict

logger = logging.getLogger(__name__)

PROG = "run_summarization_no_trainer.py"
TRACKER_PROJECT = "summarization_no_trainer"
SCHEDULER_TYPES = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay",
)
# Parameters without weight decay: biases and normalisation weights (the Trainer's rule).
NO_DECAY_NAME_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


@dataclass
class LoopArguments:
    """The loop's own flags (those of the Hugging Face no_trainer script, plus a few of the Trainer's)."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where checkpoints, the final model and all results are written (required)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in a non-empty --output_dir: seqtune's own checkpoints and result files there "
            "are replaced. Without it, a run resumes from the newest complete checkpoint."
        },
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Training batch size per process."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size per process."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (after warm-up)."})
    weight_decay: float = field(
        default=0.0, metadata={"help": "AdamW weight decay (not applied to biases and normalisation weights)."}
    )
    num_train_epochs: int = field(default=3, metadata={"help": "Passes over the training data."})
    max_train_steps: int | None = field(
        default=None, metadata={"help": "Total optimizer steps; when given, overrides --num_train_epochs."}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches whose gradients are summed before each optimizer step."}
    )
    lr_scheduler_type: str = field(
        default="linear", metadata={"help": "Learning-rate schedule after warm-up.", "choices": list(SCHEDULER_TYPES)}
    )
    num_warmup_steps: int = field(default=0, metadata={"help": "Optimizer steps of linear warm-up from 0."})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Clip the gradient norm to this (0: no clipping), as the Trainer does."}
    )
    fp16: bool = field(
        default=False,
        metadata={"help": "Mixed precision with float16 (CUDA GPUs; T5-family models overflow in it: prefer --bf16)."},
    )
    bf16: bool = field(
        default=False,
        metadata={"help": "Mixed precision with bfloat16 (CPUs, Ampere or newer GPUs). Without --fp16/--bf16, "
                  "`accelerate launch --mixed_precision` decides."},
    )
    torch_compile: bool = field(
        default=False,
        metadata={"help": "Compile the model's forward pass with torch.compile (pays off on GPUs for long runs; the "
                  "first steps are slower while it compiles). The same flag as the Trainer script's."},
    )
    torch_compile_backend: str | None = field(
        default=None, metadata={"help": 'torch.compile backend (implies --torch_compile; default "inductor").'}
    )
    torch_compile_mode: str | None = field(
        default=None,
        metadata={"help": 'torch.compile mode (implies --torch_compile): "default", "reduce-overhead", "max-autotune".'},
    )
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "Training order: 'group_by_length' (default: random groups of similar length, less padding, "
            "faster; the same order as the Trainer script's) or 'random'.",
            "choices": ["group_by_length", "random"],
        },
    )
    seed: int = field(
        default=42,
        metadata={"help": "Seed for initialisation, dropout and the order of the training data (resume needs the same)."},
    )
    checkpointing_steps: str | None = field(
        default=None,
        metadata={"help": 'Save a resumable checkpoint every N optimizer steps (a number), or after every epoch ("epoch").'},
    )
    save_total_limit: int | None = field(
        default=None, metadata={"help": "Keep at most this many checkpoints (the oldest are deleted)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Resume from this checkpoint folder. Without it, a run in a non-empty --output_dir resumes "
            "from the newest complete checkpoint there."
        },
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every N optimizer steps."})
    do_predict: bool = field(
        default=False,
        metadata={"help": "After training, generate summaries for the test split (--test_file) into generated_predictions.txt."},
    )
    with_tracking: bool = field(
        default=False, metadata={"help": "Log losses and metrics to experiment trackers (see --report_to)."}
    )
    report_to: str = field(
        default="all",
        metadata={
            "help": 'Trackers for --with_tracking: "all" (every installed one), "none", or a comma-separated list '
            "such as tensorboard,wandb."
        },
    )
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "Upload to the Hugging Face hub: each checkpoint (into last-checkpoint/) and the final model "
                  "with its card. The hub and the token are checked before training."},
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Hub repository for --push_to_hub (default: named after --output_dir)."}
    )
    hub_token: str | None = field(
        default=None, metadata={"help": "Token for --push_to_hub (default: HF_TOKEN, then the stored `hf auth login`). Never written to any file."}
    )

    def __post_init__(self):
        if not self.output_dir:
            raise UserError("--output_dir is required: the folder where the model and results go.")
        self.output_dir = os.path.expanduser(self.output_dir)  # "~/tmp/..." from a config file or a quoted flag
        check_mixed_precision(self.fp16, self.bf16)  # before anything is written
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "num_train_epochs", "logging_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise UserError(f"--max_train_steps must be at least 1, got {self.max_train_steps}.")
        if self.num_warmup_steps < 0:
            raise UserError(f"--num_warmup_steps cannot be negative, got {self.num_warmup_steps}.")
        if self.torch_compile_backend or self.torch_compile_mode:  # as the Trainer's arguments do
            self.torch_compile = True
        steps = self.checkpointing_steps
        if steps is not None and steps != "epoch" and not (steps.isdigit() and int(steps) > 0):
            raise UserError(f'--checkpointing_steps must be a positive number or "epoch", got {steps!r}.')

    # The loop always trains and evaluates (the names the shared set-up reads).
    do_train = property(lambda self: True)
    do_eval = property(lambda self: True)

    @property
    def checkpoint_every(self) -> int | None:
        """Steps between checkpoints (None: by epoch or never)."""
        return int(self.checkpointing_steps) if self.checkpointing_steps not in (None, "epoch") else None


@dataclass
class TrainingProgress:
    """Where training stands; saved in every checkpoint (Accelerate's register_for_checkpointing)."""

    epoch: int = 0  # the epoch in progress
    batches_seen: int = 0  # batches of that epoch already trained on (this process's share)
    completed_steps: int = 0  # optimizer steps
    loss_sum: float = 0.0  # sum over optimizer steps of the step's loss (mean over processes)
    total_flos: float = 0.0  # floating-point operations of all processes (the Trainer's estimate)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# --------------------------------------------------------------------------- helpers


def _trackers(args: LoopArguments) -> str | list[str] | None:
    if not args.with_tracking or args.report_to.strip().lower() in ("none", ""):
        return None
    names = [name.strip() for name in args.report_to.split(",") if name.strip()]
    return "all" if names == ["all"] else names


def _model_inputs_only(dataset, model):
    """Drop columns the model's forward() does not take (e.g. token_type_ids of some tokenizers)."""
    accepted = set(inspect.signature(model.forward).parameters)
    return dataset.remove_columns([name for name in dataset.column_names if name not in accepted])


def _optimizer(model, args: LoopArguments, device) -> torch.optim.Optimizer:
    """AdamW with weight decay on all but biases and norms: the Trainer's default optimizer."""
    from transformers.trainer_pt_utils import get_parameter_names

    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], NO_DECAY_NAME_PATTERNS))
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decay and p.requires_grad], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n not in decay and p.requires_grad], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.learning_rate, fused=device.type in ("cpu", "cuda"))


def _compile_settings(args: LoopArguments):
    """Accelerate's torch.compile settings for --torch_compile (None: eager, unless `accelerate config` says otherwise)."""
    if not args.torch_compile:
        return None
    from accelerate.utils import TorchDynamoPlugin

    # Length-grouped batches change shape every step: compile for dynamic shapes at once
    # instead of recompiling for the first few widths.
    return TorchDynamoPlugin(backend=args.torch_compile_backend or "inductor", mode=args.torch_compile_mode, dynamic=True)


def _check_loop_checkpoint(folder: str | None) -> None:
    """Refuse a folder this script cannot resume from (a Trainer checkpoint, say) before anything runs."""
    if folder and os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "custom_checkpoint_0.pkl")):
        raise UserError(
            f"{folder} is not a checkpoint of {PROG} (no custom_checkpoint_0.pkl; a Trainer checkpoint?). "
            f"Fix: resume from a checkpoint this script wrote, or pass --overwrite_output_dir to start afresh."
        )


class _TiedWeightsNote(logging.Filter):
    """save_state stores tied weights (T5's shared embeddings) once and warns about it at every
    checkpoint; load_state ties them again (the resume tests compare every tensor)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


def save_checkpoint(accelerator, output_dir: str, step: int, save_total_limit: int | None,
                    hub: HubPusher | None = None) -> None:
    """Accelerate's save_state into the staging folder; then one rename makes checkpoint-`step` visible
    (and, with --push_to_hub, goes to the hub: a failed upload is logged, training goes on)."""
    staged = checkpoints.staging_path(output_dir, step)
    if is_main_process():
        shutil.rmtree(staged, ignore_errors=True)  # what a run killed while writing this step left
    accelerator.wait_for_everyone()
    with checkpoints.guarded_save(f"checkpoint-{step}", output_dir, staged=staged):
        accelerator.save_state(staged)  # every process writes its RNG state; the main one the rest
    accelerator.wait_for_everyone()
    if is_main_process():
        published = checkpoints.publish_checkpoint(staged, output_dir, step)
        if hub is not None:
            hub.push_checkpoint(published, step)
        checkpoints.rotate_checkpoints(output_dir, save_total_limit)
        logger.info("Saved %s.", published)
    accelerator.wait_for_everyone()


def generate_batches(accelerator, model, dataloader, tokenizer, generation: dict, totals: GenerationTotals, bar) -> list[str]:
    """Loss and generation over a prepared data loader, gathered so that every example counts once;
    returns the decoded predictions in the loader's order.

    One encoder pass per batch serves the loss and `generate`; each batch is decoded and scored
    as it comes, so memory stays flat in the number of examples.
    """
    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    predictions: list[str] = []
    for batch in dataloader:
        generated, loss = generate_with_loss(unwrapped, batch, generation)
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
    if len(predictions) != len(dataloader.dataset):
        raise RuntimeError(f"generation covered {len(predictions)} examples of {len(dataloader.dataset)}")
    return predictions


def evaluate(accelerator, model, dataloader, tokenizer, generation: dict) -> dict:
    """eval_loss, eval_rouge*, eval_gen_len, runtimes and eval_samples over the (length-sorted) eval loader."""
    totals = GenerationTotals()
    bar = Progress(len(dataloader), "Evaluating", unit="batch", leave=False)
    generate_batches(accelerator, model, dataloader, tokenizer, generation, totals, bar)
    bar.close()
    return totals.metrics("eval")


def predict_to_file(accelerator, model, dataset, collator, batch_size: int, tokenizer, generation: dict, output_dir: str) -> dict:
    """Predict in windows of input order (sorted by length inside), streaming generated_predictions.txt."""
    if accelerator.device.type == "cpu":
        return_large_buffers_to_os()  # flat peak memory however many examples
    totals = GenerationTotals()
    bar = Progress(math.ceil(len(dataset) / (batch_size * accelerator.num_processes)), "Predicting", unit="batch")

    def predictions():
        for window in length_sorted_windows(token_lengths(dataset)):
            loader = accelerator.prepare(DataLoader(dataset.select(window), collate_fn=collator, batch_size=batch_size,
                                                    generator=torch.Generator()))
            yield from restore_order(window, generate_batches(accelerator, model, loader, tokenizer, generation, totals, bar))

    count = write_predictions(output_dir, predictions())  # every process generates; the main one writes
    bar.close()
    logger.info("Wrote %d predictions to %s.", count, os.path.join(output_dir, PREDICTIONS_FILE))
    return totals.metrics("predict")


# --------------------------------------------------------------------------- the recipe


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    from accelerate import Accelerator, DataLoaderConfiguration
    from transformers import get_scheduler

    # ---- 1. setup ----------------------------------------------------------------------
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, args = parse_arguments((ModelArguments, DataArguments, LoopArguments), argv, prog=PROG)
    setup_logging()
    logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())
    _check_loop_checkpoint(args.resume_from_checkpoint and os.path.expanduser(args.resume_from_checkpoint))
    trackers = _trackers(args)
    accelerator = Accelerator(
        # No GPU: say "cpu", or under torchrun every process would train on its own (gloo needs it).
        cpu=not accelerator_available(),
        # --fp16/--bf16; without them, `accelerate launch --mixed_precision` (or its config) decides.
        mixed_precision=mixed_precision_name(args.fp16, args.bf16) if (args.fp16 or args.bf16) else None,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        # The training order depends on --seed and the epoch only, on every process.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        # One schedule step per optimizer step, whatever the number of processes (as the Trainer).
        step_scheduler_with_optimizer=False,
        log_with=trackers,
        project_dir=args.output_dir if trackers else None,
        dynamo_plugin=_compile_settings(args),
    )
    logger.info("%s on %d process(es), device %s.", PROG, accelerator.num_processes, accelerator.device)
    if args.torch_compile:
        logger.info("torch.compile: backend %s, mode %s (the first steps compile).", accelerator.state.dynamo_plugin.backend,
                    args.torch_compile_mode or "default")
    # --push_to_hub: checked in set_up_run (hub reachable, token valid) before anything else.
    hub = HubPusher.from_arguments(args, model_args)

    setup = set_up_run(model_args, data_args, args, argv=argv, main_process_first=accelerator.main_process_first, hub=hub)
    tokenizer, model = setup.tokenizer, setup.model
    warn_fp16_overflow(model.config.model_type, accelerator.mixed_precision)
    _check_loop_checkpoint(setup.resume_from)  # the newest one in --output_dir
    splits = {name: _model_inputs_only(dataset, model) for name, dataset in setup.tokenized.items()}
    collator = build_collator(tokenizer, model, data_args, 8 if accelerator.mixed_precision != "no" else None)
    # Every loader has its own generator: the global RNG is left to dropout, so a resumed run
    # draws the same random numbers as an uninterrupted one.
    if args.train_sampling_strategy == "group_by_length":
        group = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        order = {"sampler": LengthGroupedSampler(token_lengths(splits["train"]), group, args.seed)}
    else:
        order = {"shuffle": True}
    train_dataloader = DataLoader(
        splits["train"], collate_fn=collator, batch_size=args.per_device_train_batch_size,
        generator=torch.Generator().manual_seed(args.seed), **order,
    )
    eval_dataloader = DataLoader(  # longest first, similar lengths together: less padding
        length_sorted(splits["validation"]), collate_fn=collator, batch_size=args.per_device_eval_batch_size, generator=torch.Generator()
    )
    optimizer = _optimizer(model, args, accelerator.device)
    model, optimizer, train_dataloader, eval_dataloader = accelerator.prepare(model, optimizer, train_dataloader, eval_dataloader)

    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_train_epochs = math.ceil(max_train_steps / steps_per_epoch)
    lr_scheduler = accelerator.prepare(
        get_scheduler(args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=args.num_warmup_steps,
                      num_training_steps=max_train_steps)
    )
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    if setup.resume_from:
        logger.info("Resuming from %s.", setup.resume_from)
        accelerator.load_state(setup.resume_from)
        logger.info("Resumed at step %d (epoch %d, %d batches into it).", progress.completed_steps, progress.epoch,
                    progress.batches_seen)
    if trackers:
        config = arguments_as_dict([model_args, data_args, args])
        accelerator.init_trackers(TRACKER_PROJECT, {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))})
    generation = {k: v for k, v in generation_settings(data_args).items() if v is not None}
    run_log = RunLog(args.output_dir)  # log_history.jsonl, for the report
    run_log.start(progress.completed_steps)

    total_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Training *****")
    logger.info("  examples = %d, epochs = %d, batch size (all processes, accumulated) = %d, optimizer steps = %d",
                len(splits["train"]), num_train_epochs, total_batch, max_train_steps)

    # ---- 2. train (3. evaluate after every epoch) ----------------------------------------
    started = time.time()
    # The Trainer's estimate of the work: 6 x input tokens x parameters (embeddings excluded).
    flos_per_input_token = 6.0 * accelerator.unwrap_model(model).num_parameters(exclude_embeddings=True)
    training_bar = Progress(max_train_steps, "Training", unit="step", initial=progress.completed_steps)
    # Per-step loss (mean over micro-batches), flos and step count not yet added to `progress`.
    unflushed = torch.zeros(3, dtype=torch.float64, device=accelerator.device)

    def flush_totals() -> float:
        """Add the unflushed steps to `progress` (summed over processes); their mean loss."""
        loss_sum, flos_sum, steps = accelerator.reduce(unflushed, reduction="sum").tolist()
        steps /= accelerator.num_processes
        loss_sum /= accelerator.num_processes  # each step's loss: the mean over processes
        progress.loss_sum += loss_sum
        progress.total_flos += flos_sum
        unflushed.zero_()
        return loss_sum / max(steps, 1)

    steps_this_run = 0
    eval_metrics: dict = {}
    for epoch in range(progress.epoch, num_train_epochs):
        if progress.completed_steps >= max_train_steps:
            break
        model.train()
        train_dataloader.set_epoch(epoch)  # the order of this epoch (seed + epoch), resumed or not
        batches = train_dataloader
        if progress.batches_seen:
            batches = accelerator.skip_first_batches(train_dataloader, progress.batches_seen)
        accumulated_loss = torch.zeros((), device=accelerator.device)
        micro_batches, flos = 0, 0.0
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                # NaN/inf on any process: every process stops here, before the optimizer step.
                check_loss_is_finite(loss, progress.completed_steps + 1, mixed_precision=accelerator.mixed_precision,
                                     model_type=setup.model.config.model_type, learning_rate=args.learning_rate,
                                     output_dir=args.output_dir)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            progress.batches_seen += 1
            accumulated_loss += loss.detach().float()
            micro_batches += 1
            flos += flos_per_input_token * batch["input_ids"].numel()
            if not accelerator.sync_gradients:
                continue
            # One optimizer step done.
            if not accelerator.optimizer_step_was_skipped:
                lr_scheduler.step()
            # Added up on the device: no host synchronisation or collective here, only at logging and
            # checkpoint steps (flush_totals).
            unflushed += torch.stack([(accumulated_loss / micro_batches).double(),
                                      torch.tensor(flos, dtype=torch.float64, device=accelerator.device),
                                      torch.ones((), dtype=torch.float64, device=accelerator.device)])
            accumulated_loss.zero_()
            micro_batches, flos = 0, 0.0
            progress.completed_steps += 1
            steps_this_run += 1
            step = progress.completed_steps
            training_bar.update(1)
            if step % args.logging_steps == 0 or step == max_train_steps:
                interval_loss = flush_totals()  # mean loss since the last log, as the Trainer logs it
                learning_rate = lr_scheduler.get_last_lr()[0]
                training_bar.set_postfix(loss=interval_loss, lr=learning_rate)
                training_bar.write(f"step {step}/{max_train_steps}  epoch {epoch}  loss {interval_loss:.4f}  "
                                   f"learning rate {learning_rate:.3e}")
                accelerator.log({"train_loss": interval_loss, "learning_rate": learning_rate, "epoch": epoch}, step=step)
                run_log.append({"step": step, "epoch": epoch, "loss": interval_loss, "learning_rate": learning_rate})
            if args.checkpoint_every and step % args.checkpoint_every == 0:
                flush_totals()  # the checkpoint holds every step's loss
                save_checkpoint(accelerator, args.output_dir, step, args.save_total_limit, hub)
            if step >= max_train_steps:
                break
        else:  # the epoch ran to its end
            progress.epoch, progress.batches_seen = epoch + 1, 0

        # ---- 3. evaluate ----------------------------------------------------------------
        eval_metrics = evaluate(accelerator, model, eval_dataloader, tokenizer, generation)
        eval_metrics["epoch"] = round(progress.completed_steps / steps_per_epoch, 4)
        logger.info("epoch %d: %s", epoch, "  ".join(f"{k}={v}" for k, v in eval_metrics.items() if "rouge" in k))
        accelerator.log(eval_metrics, step=progress.completed_steps)
        run_log.append({**eval_metrics, "step": progress.completed_steps})
        if args.checkpointing_steps == "epoch":
            flush_totals()
            save_checkpoint(accelerator, args.output_dir, progress.completed_steps, args.save_total_limit, hub)
    training_bar.close()
    flush_totals()
    runtime = time.time() - started
    if not eval_metrics:  # resumed from a checkpoint taken after the last step: evaluate once
        eval_metrics = evaluate(accelerator, model, eval_dataloader, tokenizer, generation)
        eval_metrics["epoch"] = round(progress.completed_steps / steps_per_epoch, 4)

    # ---- 4. save -----------------------------------------------------------------------
    def save_model(folder: str) -> None:
        unwrapped = accelerator.unwrap_model(model)
        state_dict = cpu_state_dict(accelerator.get_state_dict(model))  # on every process (gathers sharded weights)
        # --torch_compile: the compiled wrapper names every weight "_orig_mod.<name>".
        state_dict = {name.removeprefix("_orig_mod."): tensor for name, tensor in state_dict.items()}
        unwrapped.save_pretrained(folder, is_main_process=is_main_process(), save_function=accelerator.save,
                                  state_dict=state_dict)
        if is_main_process():
            tokenizer.save_pretrained(folder)

    model_files = save_final_model(save_model, args.output_dir)
    results: dict = {}
    train_metrics = {
        "train_loss": progress.loss_sum / max(progress.completed_steps, 1),
        "train_runtime": round(runtime, 4),
        "train_samples_per_second": round(steps_this_run * total_batch / max(runtime, 1e-9), 3),
        "train_steps_per_second": round(steps_this_run / max(runtime, 1e-9), 3),
        "epoch": round(progress.completed_steps / steps_per_epoch, 4),
        "total_flos": progress.total_flos,
        "train_samples": len(splits["train"]),
        "tokenize_runtime": setup.tokenize_runtime,
    }
    run_log.append({**train_metrics, "step": progress.completed_steps})
    for split, metrics in (("train", train_metrics), ("eval", eval_metrics)):
        record_results(args.output_dir, split, metrics, results)

    if args.do_predict:
        logger.info("*** Predict ***")
        metrics = predict_to_file(accelerator, model, splits["test"], collator, args.per_device_eval_batch_size,
                                  tokenizer, generation, args.output_dir)
        run_log.append({**metrics, "event": "predict", "step": progress.completed_steps})
        record_results(args.output_dir, "predict", metrics, results)

    if trackers:
        accelerator.end_training()
    finish(
        model_args,
        data_args,
        args,
        setup=setup,
        results=results,
        hyperparameters={"num_train_epochs": num_train_epochs, "max_train_steps": max_train_steps,
                         "gradient_accumulation_steps": args.gradient_accumulation_steps},
        command=[PROG, *argv],
        trainer=f"Accelerate loop, {accelerator.num_processes} process(es)",
        model_files=model_files,
        hub=hub,  # --push_to_hub: the final push, after the card
    )
    return results


def _mp_fn(index: int) -> None:
    """Entry point for xla_spawn.py (one call per TPU core)."""
    main()


if __name__ == "__main__":
    main()
