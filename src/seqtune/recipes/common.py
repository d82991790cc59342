"""The steps every recipe takes before and after its training loop.

Both recipes (`recipes.trainer`, `recipes.accelerate_loop`) start a run the same way
(output-dir rules, seed, data, model, run marker, tokenization), generate with the same
settings, and end it the same way (report, model card, run marker, hub). They differ only
in the loop between `set_up_run` and `wrap_up_run`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from transformers import set_seed

from ..adapters import adapter_summary, apply_lora, check_same_model
from ..arguments import DataArguments, LoopArguments, ModelArguments
from ..card import write_model_card
from ..data import RawData, load_raw_data, split_needs, text_encoder, tokenize_splits, wanted_splits
from ..errors import UserError
from ..generation import PREDICTION_WINDOW
from ..modeling import load_model_and_tokenizer, remember_task_settings
from ..outputs import (
    log_metrics,
    mark_run_finished,
    mark_run_started,
    prepare_output_dir,
    redacted_command,
    unlock_output_dir,
    write_results,
)
from ..progress import configure_library_progress, phase
from ..report import REPORT_EXAMPLES, build_report_at_end, save_report_examples
from ..runtime import close_process_group
from ..streaming import EvaluationStream, TrainingStream
from ..tasks import TRANSLATION, task_of
from ..xla import log_compilations, on_xla, prepare_for_xla

logger = logging.getLogger(__name__)


@dataclass
class RunSetup:
    """What a recipe has once the run is set up: where to resume from, the data and the model."""

    resume_from: str | None  # the checkpoint to resume from, or None to start afresh
    raw: RawData
    tokenizer: Any
    model: Any
    tokenized: Any  # DatasetDict of the wanted splits, tokenized
    tokenize_runtime: float = 0.0  # seconds spent tokenizing (or reading datasets' cache)
    # --streaming: the validation and test splits, read and tokenized window by window at each evaluation
    eval_streams: dict = field(default_factory=dict)


def set_up_run(
    model_args: ModelArguments,
    data_args: DataArguments,
    run_args,  # the loop's arguments: output_dir, overwrite_output_dir, resume_from_checkpoint, do_*, seed
    *,
    command: list[str],  # the script and its arguments, for the run record and the report
    main_process_first=contextlib.nullcontext,
    hub=None,  # a seqtune.hub.HubPusher with --push_to_hub: checked before anything else
    create_model=None,  # how the model is made (default PyTorch's; the TensorFlow recipe passes its own)
    check_checkpoint=check_same_model,  # refuses a checkpoint of another model
) -> RunSetup:
    """Output dir (resume, refuse or start afresh), seed, validated data, model, run marker, tokens.

    Nothing is written before the data and the model have loaded, so a bad file or a
    wrong model name loses nothing.
    """
    configure_library_progress()  # bars on a terminal, line-based progress in logs
    check_streaming(data_args, run_args)
    if hub is not None:
        hub.check()  # hub reachable, token valid, repository there: fail now, not after training
    output_dir = run_args.output_dir
    resume_from = prepare_output_dir(
        output_dir, run_args.overwrite_output_dir, run_args.resume_from_checkpoint, run_args.do_train
    )
    set_seed(run_args.seed)
    with phase("Loading the data"):
        wanted = wanted_splits(run_args.do_train, run_args.do_eval, run_args.do_predict)
        raw = load_raw_data(data_args, model_args, wanted, needs=split_needs(run_args))
    tokenizer, model = load_model_and_tokenizer(model_args, data_args, create_model)
    model = apply_lora(model, model_args)  # --use_peft / --lora_r: LoRA adapters (PEFT) are what trains
    if resume_from:  # a checkpoint of another model (or adapter): refused before anything is written
        check_checkpoint(resume_from, model, model_args.model_name_or_path)
    remember_task_settings(model, data_args)  # saved with the model for `seqtune summarize`
    prepare_for_xla(data_args, model)  # TPUs: static shapes (padding, fixed-size generation); no-op elsewhere
    mark_run_started(output_dir, command, [model_args, data_args, run_args])  # secrets redacted
    save_report_examples(output_dir, report_rows(raw), raw.text_column, raw.summary_column)
    started = time.time()
    tokenized = tokenize_splits(raw, tokenizer, data_args, main_process_first)
    return RunSetup(
        resume_from=resume_from,
        raw=raw,
        tokenizer=tokenizer,
        model=model,
        tokenized=tokenized,
        tokenize_runtime=round(time.time() - started, 4),
        eval_streams=evaluation_streams(raw, tokenizer, model, data_args),
    )


def report_rows(raw: RawData):
    """The test split's first rows for the report (a streamed test split: its first few rows, read now)."""
    corpus = (raw.eval_corpora or {}).get("test")
    if corpus is None:
        return raw.splits.get("test")
    from datasets import Dataset

    rows = corpus.first_rows(REPORT_EXAMPLES)
    return Dataset.from_dict(
        {raw.text_column: [r["text"] for r in rows], raw.summary_column: [r["target"] for r in rows]}
    )


def check_streaming(data_args: DataArguments, run_args) -> None:
    """--streaming trains for a number of steps, checkpoints by steps and reads the stream in the main process."""
    if not data_args.streaming:
        return
    loop = isinstance(run_args, LoopArguments)
    if not (loop or run_args.do_train):
        return
    steps_flag = "--max_train_steps" if loop else "--max_steps"
    if (run_args.max_train_steps if loop else run_args.max_steps) in (None, -1, 0):
        raise UserError(
            f"--streaming trains for a number of steps: pass {steps_flag} N (a stream has no known length, so "
            f"epochs cannot be counted; it starts a new pass over the data whenever it runs out)."
        )
    epoch_flags = ["--checkpointing_steps epoch"] if loop and run_args.checkpointing_steps == "epoch" else []
    if not loop:
        epoch_flags += [f"--{name} epoch" for name in ("save_strategy", "eval_strategy") if _is_epoch(run_args, name)]
    if epoch_flags:
        raise UserError(
            f"{epoch_flags[0]}: a stream has no epochs, so this would never happen. Fix: count in steps "
            f"(e.g. {'--checkpointing_steps 500' if loop else '--save_strategy steps --save_steps 500'})."
        )
    if not loop and run_args.dataloader_num_workers:
        raise UserError(
            "--streaming reads and tokenizes the stream in the main process (a block at a time, on all cores). "
            "Fix: leave out --dataloader_num_workers."
        )
    if run_args.train_sampling_strategy not in ("group_by_length", "random", "sequential"):
        raise UserError(
            f"--train_sampling_strategy {run_args.train_sampling_strategy} needs the whole data set; --streaming "
            f"orders each block of --shuffle_buffer_size examples. Fix: use group_by_length, random or sequential."
        )


def _is_epoch(run_args, name: str) -> bool:
    return str(getattr(getattr(run_args, name), "value", getattr(run_args, name))) == "epoch"


def model_input_encoder(tokenizer, model, data_args: DataArguments, max_target_length: int):
    """encode(texts, targets) -> the model's inputs only (as lists), for the examples of a stream."""
    encode = text_encoder(tokenizer, data_args, max_target_length)
    accepted = set(inspect.signature(model.forward).parameters)

    def model_inputs(texts: list[str], targets: list[str]) -> dict:
        return {key: values for key, values in encode(texts, targets).items() if key in accepted}

    return model_inputs


def training_stream(setup: RunSetup, data_args: DataArguments, *, group_size: int, seed: int, order: str):
    """--streaming: the endless, tokenized training examples (model inputs only); None for in-memory data."""
    corpus = setup.raw.train_corpus
    if corpus is None:
        return None
    encode = model_input_encoder(setup.tokenizer, setup.model, data_args, data_args.max_target_length)
    return TrainingStream(
        corpus, encode, block_size=data_args.shuffle_buffer_size, group_size=group_size, seed=seed, order=order
    )


def evaluation_streams(raw: RawData, tokenizer, model, data_args: DataArguments) -> dict:
    """--streaming: {"validation": EvaluationStream, "test": ...} for the wanted splits (empty in memory).

    A window holds --shuffle_buffer_size examples, at most seqtune.generation.PREDICTION_WINDOW."""
    if not raw.eval_corpora:
        return {}
    encode = model_input_encoder(tokenizer, model, data_args, data_args.val_max_target_length)
    window = min(data_args.shuffle_buffer_size, PREDICTION_WINDOW)
    return {
        split: EvaluationStream(corpus, encode, window=window) for split, corpus in (raw.eval_corpora or {}).items()
    }


def stream_metrics(stream: TrainingStream | None) -> dict:
    """--streaming: rows of the stream left out by this process's reading (a resume reads one block again)."""
    if stream is None:
        return {}
    corpus = stream.corpus
    metrics = {"train_empty_rows_dropped": corpus.empty_rows}
    if corpus.skip_bad_rows:
        metrics["train_bad_rows_skipped"] = corpus.bad_rows
    return metrics


def generation_settings(data_args: DataArguments, max_length: int | None = None, num_beams: int | None = None) -> dict:
    """max_length and num_beams for evaluation and prediction.

    The length defaults to --val_max_target_length; --num_beams, when given, wins over the
    loop's own setting (None leaves the model's generation config in charge).
    """
    return {
        "max_length": max_length if max_length is not None else data_args.val_max_target_length,
        "num_beams": data_args.num_beams if data_args.num_beams is not None else num_beams,
    }


def record_results(output_dir: str, split: str, metrics: dict, results: dict) -> None:
    """Log a split's metrics, write {split}_results.json (merged into all_results.json), add them to `results`."""
    log_metrics(split, metrics)
    write_results(output_dir, split, metrics)
    results.update(metrics)


def wrap_up_run(
    model_args: ModelArguments,
    data_args: DataArguments,
    run_args,  # the loop's arguments: output_dir, learning_rate, per_device_train_batch_size, seed
    *,
    setup: RunSetup,
    results: dict,
    command: list[str],
    trainer: str,
    model_files: list[str] | None,
    hyperparameters: dict | None = None,  # the loop's own, besides learning rate, batch size and seed
    hub=None,  # a seqtune.hub.HubPusher with --push_to_hub: pushes the finished output dir
) -> None:
    """Write the report and the model card, mark the run finished, say where everything is, push it (--push_to_hub)."""
    output_dir = run_args.output_dir
    build_report_at_end(output_dir)  # before the card, which shows the training-loss plot
    write_model_card(
        output_dir,
        {
            "base_model": model_args.model_name_or_path,
            # --config_name / --model_type without --model_name_or_path: no base model to name.
            "from_scratch": None
            if model_args.model_name_or_path
            else f"config {model_args.config_name}"
            if model_args.config_name
            else f"model type {model_args.model_type}",
            "dataset": setup.raw.source,
            "metrics": {k: v for k, v in results.items() if k.startswith(("eval_", "predict_", "train_loss"))},
            "hyperparameters": {
                "learning_rate": run_args.learning_rate,
                "per_device_train_batch_size": run_args.per_device_train_batch_size,
                "seed": run_args.seed,
                **(hyperparameters or {}),
                "max_source_length": data_args.max_source_length,
                "max_target_length": data_args.max_target_length,
            },
            "source_prefix": data_args.source_prefix,
            "task": task_of(data_args).name,  # the card's pipeline, command and (translation) languages
            "languages": list(data_args.languages) if task_of(data_args) is TRANSLATION else None,
            "command": redacted_command(command),
            "trainer": trainer,
            "repo_id": hub.repo_id if hub is not None else None,
            "adapter": adapter_summary(setup.model),  # a LoRA run: the card describes the adapter
        },
    )
    log_compilations()  # on an XLA device: how many graphs were compiled
    mark_run_finished(output_dir, model_files)
    if not on_xla():  # xmp.spawn tears its replicas down itself
        close_process_group()  # before the push, which only the main process does and which may take long
    logger.info("Outputs are in %s", os.path.abspath(output_dir))
    if hub is not None:
        hub.push_final(output_dir)
    unlock_output_dir(output_dir)
