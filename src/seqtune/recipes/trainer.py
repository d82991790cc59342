"""The Trainer recipe: fine-tune a seq2seq model with transformers' Seq2SeqTrainer.

`main` reads top to bottom: arguments, set up (output dir, data, model: the shared core),
build the trainer, train, evaluate, predict, wrap up (report, card, hub). Everything but the
loop comes from the shared core; `SeqtuneTrainer` is the Seq2SeqTrainer with seqtune's
checkpoints, loss and evaluation.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys

import torch
from torch.utils.data import DataLoader, SequentialSampler
from transformers import Seq2SeqTrainer

from .. import adapters, checkpoints, fsdp, progress
from ..arguments import DataArguments, ModelArguments, TrainerArguments, changed_arguments, parse_arguments
from ..batching import (
    LengthGroupedSampler,
    apply_global_batch_size,
    global_batch_size,
    log_resume_layout,
    token_lengths,
)
from ..data import build_collator
from ..errors import exit_on_user_error
from ..fsdp_trainer import ShardedTraining
from ..generation import (
    GenerationTotals,
    evaluate_in_windows,
    generate_with_loss,
    length_sorted,
    predict_to_file,
)
from ..hub import HubPusher
from ..losses import example_loss_sums, mean_token_loss, token_summed_loss
from ..metrics import Scorer, SummaryScorer, decode_token_ids, score_generated
from ..outputs import atomic_write_text, record_files
from ..precision import check_loss_is_finite, mixed_precision_name, warn_fp16_overflow
from ..report import RunLog, RunLogCallback
from ..runtime import is_main_process, setup_logging
from ..sharding import resume_zero_elsewhere, universal_view_path
from ..streaming import STREAM_POSITION_FILE, TrainingStream
from ..tasks import SUMMARIZATION, Task, task_of
from ..xla import prepare_trainer_arguments
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


class WindowedEvaluation:
    """Prediction and streamed evaluation for SeqtuneTrainer: windows of input order, sorted by length inside,
    predictions written as they come and metrics added up across windows (seqtune.generation)."""

    last_example_losses: list | None = None

    def predict_to_file(self, source, output_dir: str) -> dict:
        """Generate for every example of `source` (a tokenized data set or, with --streaming, the test split's
        EvaluationStream), write generated_predictions.txt in input order as they come, and return the
        predict_* metrics; memory stays flat in the number of examples."""
        return self._in_windows(
            lambda generate_window, scorer, on_cpu: predict_to_file(source, generate_window, output_dir, scorer, on_cpu)
        )

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        """A streamed split (--streaming) is evaluated window by window, its totals logged as the Trainer logs
        an evaluation (at every evaluation point during training, too); data sets as transformers does."""
        source = self.eval_dataset if eval_dataset is None else eval_dataset
        if not hasattr(source, "windows"):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **gen_kwargs)
        metrics = self.evaluate_in_windows(source, metric_key_prefix)
        self.log(metrics)  # adds the epoch, as for a data set
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def evaluate_in_windows(self, source, prefix: str) -> dict:
        """The {prefix}_* metrics of `source` (see `predict_to_file`), no predictions written; the loss not
        rounded and the model's preparation time, as transformers' evaluate and predict report them."""
        metrics = self._in_windows(
            lambda generate_window, scorer, on_cpu: evaluate_in_windows(
                source, generate_window, scorer, prefix, on_cpu, loss_digits=None
            )
        )
        if hasattr(self, "model_preparation_time"):  # the model was prepared for evaluation (no training before)
            metrics[f"{prefix}_model_preparation_time"] = self.model_preparation_time
        return metrics

    def _in_windows(self, run) -> dict:
        """`run(generate_window, scorer, on_cpu)` with the Trainer predicting each window (without
        --predict_with_generate: the loss only), scored across windows."""
        tokenizer = self.processing_class
        per_batch = self.args.per_device_eval_batch_size * self.args.world_size

        def generate_window(subset, totals: GenerationTotals) -> list[str] | None:
            output = self.predict(subset, metric_key_prefix="predict")
            totals.losses.extend(self.last_example_losses or [])
            totals.batches += -(-len(subset) // per_batch)
            if output.predictions is None:  # no --predict_with_generate: the loss only
                totals.unscored += len(subset)
                return None
            generated = decode_token_ids(output.predictions, tokenizer)
            totals.scorer.add(
                generated, decode_token_ids(output.label_ids, tokenizer), output.predictions, tokenizer.pad_token_id
            )
            return generated

        compute_metrics, self.compute_metrics = self.compute_metrics, None  # scored here, across windows
        loss_only = self.args.prediction_loss_only
        self.args.prediction_loss_only = loss_only or not self.args.predict_with_generate  # no logits kept
        try:
            return run(generate_window, self.scorer(), self.args.device.type == "cpu")
        finally:
            self.compute_metrics = compute_metrics
            self.args.prediction_loss_only = loss_only


class SeqtuneTrainer(ShardedTraining, WindowedEvaluation, Seq2SeqTrainer):
    """Seq2SeqTrainer whose checkpoints appear only when complete (see `seqtune.checkpoints`),
    whose loss is the mean over every target token of the global batch (so 2 processes x 2
    train exactly like 1 process x 4), which stops at the first non-finite loss, and whose
    distributed evaluation and prediction count every example once, in input order; with
    --fsdp on CPUs, over a model seqtune sharded itself (`ShardedTraining`)."""

    _writing_checkpoint = False  # while True, the Trainer writes into the staging folder
    hub_pusher: HubPusher | None = None  # --push_to_hub: pushes each published checkpoint
    progress_callback: progress.TrainerProgressCallback | None = None  # names the next evaluation loop
    scorer: type[Scorer] = SummaryScorer  # the task's metric
    stream: TrainingStream | None = None  # --streaming: the training examples; its position goes in each checkpoint
    length_sampler: LengthGroupedSampler | None = None  # the training order, told its epoch in _run_epoch
    global_batch: int = 1  # examples per optimizer step, all processes and accumulation (set by build_trainer)

    def __init__(self, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        # transformers 5's Trainer sets config.use_cache to --use_cache (False unless given) for training:
        # the model's own value, for the configs it saves (see save_model).
        self.model_use_cache = getattr(getattr(model, "config", None), "use_cache", None)
        super().__init__(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Saved (checkpoints and final model) with the model's own config.use_cache, not the training value:
        loaders that read it from config.json (transformers 4; the TensorFlow script's XLA generate, which then
        fails for want of a cache) would otherwise generate without a cache."""
        config = getattr(self.model, "config", None)
        if config is None or self.model_use_cache is None:
            return super().save_model(output_dir, _internal_call)
        training_value, config.use_cache = config.use_cache, self.model_use_cache
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            config.use_cache = training_value

    # --- distributed evaluation: no padded duplicates --------------------------------------
    # Seq2SeqTrainer.evaluate/predict switch gathering to `accelerator.gather`, which keeps
    # the examples Accelerate repeats to give every process a full last batch: with 2
    # processes, predictions and metrics would count some examples twice.
    # `gather_for_metrics` drops them (the test set is a map-style dataset of known length).
    @property
    def gather_function(self):
        return self._gather_function

    @gather_function.setter
    def gather_function(self, function) -> None:
        if function == self.accelerator.gather:
            function = self.accelerator.gather_for_metrics
        self._gather_function = function

    # The evaluation loss: transformers averages per-batch mean losses, so a batch holding a
    # repeated example (the padding of a distributed last batch) and the batch sizes weigh in.
    # seqtune sums every example's target-token losses, gathers them per example (duplicates
    # dropped) and reports sum / tokens: the same number for any batch size or process count.
    _example_losses: list | None = None

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        self._example_losses = []
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            if self._example_losses:
                output.metrics[f"{metric_key_prefix}_loss"] = mean_token_loss(self._example_losses)
            self.last_example_losses = self._example_losses
        finally:
            self._example_losses = None
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if self.args.predict_with_generate and not prediction_loss_only and self._generates_alone():
            # One encoder pass for both the loss and generate (see seqtune.generation).
            inputs = self._prepare_inputs(inputs)
            generation = dict(gen_kwargs or getattr(self, "_gen_kwargs", {}))
            with torch.no_grad(), self.compute_loss_context_manager():
                generated, sums = generate_with_loss(self.model, inputs, generation)
            loss = None
            if sums is not None:
                if self._example_losses is not None:
                    self._example_losses.append(self.gather_function(sums).cpu())
                loss = (sums[:, 0].sum() / sums[:, 1].sum().clamp(min=1)).detach()
            return loss, generated, inputs.get("labels")
        result = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        if self._example_losses is not None and inputs.get("labels") is not None:
            prepared = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                logits = model(**prepared)["logits"]
            self._example_losses.append(self.gather_function(example_loss_sums(logits, prepared["labels"])).cpu())
        return result

    def _generates_alone(self) -> bool:
        """seqtune's one encoder pass serves this model: each process generates on its own, or the model is
        seqtune's FSDP2 (generate keeps its processes in step); other sharded models take the Trainer's path."""
        from transformers.integrations import is_deepspeed_zero3_enabled
        from transformers.integrations.fsdp import is_fsdp_managed_module

        if fsdp.is_sharded_by_seqtune(self.model):
            return True
        return not (is_deepspeed_zero3_enabled() or is_fsdp_managed_module(self.model))

    # --- loss: mean over the target tokens of the whole (global, accumulated) batch -------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if num_items_in_batch is not None and labels is not None and self.label_smoother is None:
            # Seq2seq models (T5, BART, ...) accept **kwargs, so the Trainer passes them the
            # global token count and multiplies their loss by the number of processes; but their
            # loss ignores the count and stays a per-batch mean, which makes the gradients
            # world-size times too large and ignores gradient accumulation. Normalise here.
            loss = token_summed_loss(outputs["logits"], labels) / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    # --- the non-finite-loss guard ------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        check_loss_is_finite(
            loss,
            self.state.global_step + 1,  # the optimizer step this batch belongs to
            mixed_precision=mixed_precision_name(self.args.fp16, self.args.bf16),
            model_type=getattr(self.accelerator.unwrap_model(self.model).config, "model_type", None),
            learning_rate=self.args.learning_rate,
            output_dir=self.args.output_dir,
        )
        return loss

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is written, the Trainer writes into the staging folder.
        if self._writing_checkpoint:
            return checkpoints.staging_root(self.args.output_dir)
        return super()._get_output_dir(trial)

    # --- training order: length-grouped, seeded by (seed, epoch) only, as in the Accelerate loop ---
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or not hasattr(dataset, "with_format"):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed or self.args.seed
        self.length_sampler = LengthGroupedSampler(token_lengths(dataset), self.global_batch, seed)
        return self.length_sampler

    def _run_epoch(self, *args, **kwargs):
        # On several processes, a mid-epoch resume wraps the sharded batch sampler in accelerate's
        # SkipBatchSampler, one level deeper than set_epoch reaches: the resumed epoch was read in
        # epoch 0's order (2-process kill torture). The sampler learns its epoch here, before each epoch.
        if self.length_sampler is not None and "epoch" in kwargs:
            self.length_sampler.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)

    def get_train_dataloader(self):
        if self.stream is None:
            return super().get_train_dataloader()
        # The stream orders itself; its loader gets its own generator, as the Accelerate loop's: a loader
        # without one seeds its iterator from the global RNG, which dropout also draws from, so a resumed
        # run (RNG restored, then a new iterator) would draw other dropout masks than an uninterrupted one.
        loader = DataLoader(
            self.stream,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            pin_memory=self.args.dataloader_pin_memory,
            generator=torch.Generator().manual_seed(self.args.seed),
        )
        return self.accelerator.prepare(loader)

    def _get_eval_sampler(self, eval_dataset):
        # transformers 5 also length-groups evaluation under group_by_length, in a random order,
        # which would shuffle the predictions. seqtune sorts evaluation data itself (see
        # seqtune.generation) and needs the data set's own order here.
        if eval_dataset is None or not hasattr(eval_dataset, "__len__"):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, *args, **kwargs):
        epochs_trained, steps_in_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, *args, **kwargs
        )
        if max_steps > 0 and self.state.global_step >= max_steps:
            # Resumed from the last checkpoint (killed after it, during the final save): nothing is
            # left to train. transformers would still take one step past --max_steps here.
            return num_train_epochs, 0
        return epochs_trained, steps_in_epoch

    def _save_checkpoint(self, model, trial) -> None:
        def write_checkpoint() -> None:
            super(SeqtuneTrainer, self)._save_checkpoint(model, trial)
            staged = checkpoints.staging_path(self.args.output_dir, self.state.global_step)
            adapters.complete_adapter_folder(self.model, staged)  # a LoRA run: the task settings beside the adapter
            if self.stream is not None and self.is_world_process_zero():
                position = self.stream.position_at(self.examples_trained())
                atomic_write_text(os.path.join(staged, STREAM_POSITION_FILE), json.dumps(position))

        checkpoints.save_trainer_checkpoint(self, write_checkpoint)

    def examples_trained(self) -> int:
        return self.state.global_step * self.global_batch

    def _issue_warnings_after_load(self, load_result) -> None:
        # Tied weights (T5's and BART's shared embeddings and output layer) are saved once and the
        # load fills them through the one saved; transformers still warns "There were missing keys
        # in the checkpoint model loaded: [...embed_tokens..., lm_head]" at every resume. Only
        # weights that are really missing are reported.
        if hasattr(load_result, "_replace") and load_result.missing_keys:
            missing = checkpoints.untied_missing_keys(self.model, load_result.missing_keys)
            load_result = load_result._replace(missing_keys=missing)
        super()._issue_warnings_after_load(load_result)


def build_compute_metrics(tokenizer, scorer: type[Scorer]):
    def compute_metrics(eval_prediction):
        generated = eval_prediction.predictions
        if isinstance(generated, tuple):
            generated = generated[0]
        return score_generated(generated, eval_prediction.label_ids, tokenizer, scorer())

    return compute_metrics


@exit_on_user_error
def main(argv: list[str] | None = None, task: Task = SUMMARIZATION) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    prog = task.trainer_script
    model_args, data_args, training_args = parse_arguments(
        (ModelArguments, task.data_arguments, TrainerArguments), argv, prog=prog
    )
    setup_logging(training_args.log_level)
    prepare_trainer_arguments(training_args)  # a non-fused optimizer on TPUs
    logger.info(
        "Training arguments that differ from the defaults (all: seqtune_args.json): %s",
        changed_arguments(training_args),
    )
    hub = HubPusher.from_arguments(training_args, model_args)  # --push_to_hub: checked in set_up_run, before anything
    setup = set_up_run(
        model_args,
        data_args,
        training_args,
        command=[prog, *argv],
        main_process_first=training_args.main_process_first,
        hub=hub,
    )
    warn_fp16_overflow(setup.model.config.model_type, mixed_precision_name(training_args.fp16, training_args.bf16))
    trainer = build_trainer(training_args, data_args, setup, hub)
    output_dir, tokenized = training_args.output_dir, setup.tokenized

    results: dict = {}
    model_files = None
    if training_args.do_train:
        if trainer.stream is not None and setup.resume_from:
            resume_stream(trainer.stream, setup.resume_from)
        resume_from = resume_point(trainer, setup.resume_from) if setup.resume_from else None
        try:
            train_result = trainer.train(resume_from_checkpoint=resume_from)
        finally:
            if resume_from != setup.resume_from and is_main_process():  # ZeRO's universal view: no longer needed
                shutil.rmtree(resume_from, ignore_errors=True)
        # --use_peft: the adapter folder (and, with --merge_adapter, OUTPUT_DIR/merged)
        model_files = adapters.save_final(trainer.save_model, trainer.model, setup.tokenizer, model_args, output_dir)
        samples = len(tokenized["train"]) if trainer.stream is None else trainer.examples_trained()
        metrics = dict(train_result.metrics, train_samples=samples, tokenize_runtime=setup.tokenize_runtime)
        metrics.update(stream_metrics(trainer.stream))
        record_results(output_dir, "train", metrics, results)
        if trainer.is_world_process_zero():
            trainer.state.save_to_json(os.path.join(output_dir, "trainer_state.json"))
            record_files(output_dir, ["trainer_state.json"])
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate(metric_key_prefix="eval")
        if "validation" in tokenized:  # a streamed split counts its examples itself
            metrics = dict(metrics, eval_samples=len(tokenized["validation"]))
        record_results(output_dir, "eval", metrics, results)
    if training_args.do_predict:
        logger.info("*** Predict ***")
        trainer.progress_callback.label = "Predicting"
        test = setup.eval_streams.get("test") or tokenized["test"]
        if training_args.predict_with_generate:
            metrics = trainer.predict_to_file(test, output_dir)
        elif "test" in setup.eval_streams:
            metrics = trainer.evaluate_in_windows(test, "predict")
        else:
            prediction = trainer.predict(tokenized["test"], metric_key_prefix="predict")
            metrics = dict(prediction.metrics, predict_samples=len(tokenized["test"]))
        record_results(output_dir, "predict", metrics, results)
        RunLog(output_dir).append(
            {**metrics, "event": "predict", "step": trainer.state.global_step, "epoch": trainer.state.epoch}
        )
    wrap_up_run(
        model_args,
        data_args,
        training_args,
        setup=setup,
        results=results,
        hyperparameters={"num_train_epochs": training_args.num_train_epochs, "max_steps": training_args.max_steps},
        command=[prog, *argv],
        trainer="Seq2SeqTrainer",
        model_files=model_files,
        hub=hub,
    )
    return results


def _mp_fn(index: int) -> None:
    """Entry point for xla_spawn.py (one call per TPU core)."""
    main()


def resume_point(trainer: SeqtuneTrainer, checkpoint: str) -> str:
    """The folder `trainer.train` resumes from: `checkpoint`, or for DeepSpeed ZeRO state written on another number
    of processes a view of it in DeepSpeed's universal format (`sharding.resume_zero_elsewhere`). A resume on
    another number of processes or accumulation (elastic) is said; another global batch is warned about (the
    Trainer recomputes its position from the optimizer steps taken)."""
    saved = checkpoints.saved_layout(checkpoint) or (None,)
    here = tuple(checkpoints.trainer_layout(trainer).values())
    log_resume_layout(saved, here, f"at step {checkpoints.checkpoint_step(checkpoint)}")
    args = trainer.args
    latest = os.path.join(checkpoint, "latest")  # DeepSpeed's: the name of its folder in the checkpoint
    if not args.deepspeed or not os.path.isfile(latest):
        return checkpoint
    with open(latest, encoding="utf-8") as handle:
        tag = handle.read().strip()
    view = universal_view_path(args.output_dir, checkpoint)
    config = args.hf_deepspeed_config.config  # the one DeepSpeed is initialized with, when training starts
    return resume_zero_elsewhere(config, checkpoint, tag, args.world_size, view, latest_file="latest_universal")


def resume_stream(stream: TrainingStream, checkpoint: str) -> None:
    """--streaming: continue the stream where `checkpoint` left it (the Trainer skips no batches)."""
    path = os.path.join(checkpoint, STREAM_POSITION_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            stream.resume(json.load(handle))
    else:
        logger.warning("%s was not written by a --streaming run: the stream starts at its beginning.", checkpoint)


def build_trainer(
    training_args: TrainerArguments, data_args: DataArguments, setup: RunSetup, hub: HubPusher | None
) -> SeqtuneTrainer:
    """The SeqtuneTrainer over the tokenized splits, with seqtune's generation settings, run log and progress."""
    tokenizer, model, tokenized = setup.tokenizer, setup.model, setup.tokenized
    scorer = task_of(data_args).scorer
    generation = generation_settings(data_args, training_args.generation_max_length, training_args.generation_num_beams)
    training_args.generation_max_length = generation["max_length"]
    training_args.generation_num_beams = generation["num_beams"]
    pad_multiple = 8 if (training_args.fp16 or training_args.bf16) and not data_args.pad_to_max_length else None
    training_args.push_to_hub = False  # the Trainer's own pushes would bypass staging and write their own card
    apply_global_batch_size(training_args, training_args.world_size)  # --global_batch_size: the accumulation
    if training_args.seqtune_fsdp:  # --fsdp on CPUs: sharded by seqtune before the Trainer sees it (fsdp_trainer)
        logger.info(
            "FSDP on a machine without GPUs, where transformers and accelerate would train with plain DDP: seqtune "
            "shards the model itself (FSDP2, fully_shard per block)."
        )
        model = fsdp.shard_for_training(model, training_args.device, bf16=training_args.bf16)
    group = global_batch_size(
        training_args.per_device_train_batch_size, training_args.world_size, training_args.gradient_accumulation_steps
    )
    order = training_args.train_sampling_strategy
    stream = training_stream(
        setup, data_args, group_size=group, seed=training_args.data_seed or training_args.seed, order=order
    )
    if stream is not None:
        # Every process reads the stream and keeps its part of each batch (dispatching batches from the main
        # process fails on batches of different widths); on resume the stream continues from the checkpoint's
        # position instead of the Trainer reading its way past the batches already seen.
        training_args.accelerator_config.dispatch_batches = False
        training_args.ignore_data_skip = True
    trainer = SeqtuneTrainer(
        model=model,
        args=training_args,
        train_dataset=stream if stream is not None else tokenized.get("train"),
        # Evaluation longest first, similar lengths together: less padding (metrics do not depend on order);
        # a streamed validation split (--streaming) sorts each window as it reads it (`evaluate`).
        eval_dataset=length_sorted(tokenized["validation"])
        if "validation" in tokenized
        else setup.eval_streams.get("validation"),
        processing_class=tokenizer,
        data_collator=build_collator(tokenizer, model, data_args, pad_multiple),
        compute_metrics=build_compute_metrics(tokenizer, scorer) if training_args.predict_with_generate else None,
    )
    trainer.scorer = scorer
    trainer.stream = stream
    trainer.global_batch = group
    trainer.hub_pusher = hub
    trainer.add_callback(RunLogCallback(training_args.output_dir))  # log_history.jsonl, for the report
    trainer.progress_callback = progress.install(trainer)  # bars on a terminal, log lines elsewhere
    return trainer


if __name__ == "__main__":
    main()
