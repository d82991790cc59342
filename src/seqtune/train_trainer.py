"""The Trainer recipe: fine-tune a seq2seq model with transformers' Seq2SeqTrainer.

Read top to bottom: arguments, output dir, data, model, trainer, train, evaluate,
predict, outputs. Everything but the loop comes from the shared core.
"""

from __future__ import annotations

import logging
import os
import sys

from transformers import Seq2SeqTrainer, set_seed

from . import checkpoints
from .arguments import DataArguments, ModelArguments, TrainerArguments, parse_arguments
from .data import build_collator, load_raw_data, tokenize_splits, wanted_splits
from .errors import exit_on_user_error
from .metrics import decode_token_ids, summary_metrics
from .modeling import load_model_and_tokenizer
from .outputs import (
    finish_run,
    log_metrics,
    prepare_output_dir,
    redacted_command,
    save_final_model,
    start_run,
    write_model_card,
    write_predictions,
    write_results,
)
from .runtime import setup_logging

logger = logging.getLogger(__name__)


class SeqtuneTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose checkpoints appear only when complete (see `seqtune.checkpoints`)."""

    _writing_checkpoint = False

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is written, the Trainer writes into the staging folder.
        if self._writing_checkpoint:
            return checkpoints.staging_root(self.args.output_dir)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        output_dir = self.args.output_dir
        staging = checkpoints.staging_root(output_dir)
        self._writing_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._writing_checkpoint = False
        best = self.state.best_model_checkpoint
        if best and os.path.normpath(best).startswith(os.path.normpath(staging)):
            self.state.best_model_checkpoint = os.path.join(output_dir, os.path.basename(best))
        step = self.state.global_step
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            staged = checkpoints.staging_path(output_dir, step)
            self.state.save_to_json(os.path.join(staged, "trainer_state.json"))  # with the published paths
            checkpoints.publish_checkpoint(staged, output_dir, step)
            checkpoints.rotate_checkpoints(output_dir, self.args.save_total_limit, keep=self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()


def build_compute_metrics(tokenizer):
    def compute_metrics(eval_prediction):
        generated = eval_prediction.predictions
        if isinstance(generated, tuple):
            generated = generated[0]
        return summary_metrics(generated, eval_prediction.label_ids, tokenizer)

    return compute_metrics


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, training_args = parse_arguments(
        (ModelArguments, DataArguments, TrainerArguments), argv, prog="run_summarization.py"
    )
    setup_logging(training_args.log_level)
    logger.info("Training/evaluation parameters: %s", training_args.to_dict() | {"hub_token": None})

    # Output dir (resume, refuse, or start afresh), seed, data, model: the same for every recipe.
    setup = set_up_run(
        model_args,
        data_args,
        output_dir=training_args.output_dir,
        overwrite_output_dir=training_args.overwrite_output_dir,
        resume_from_checkpoint=training_args.resume_from_checkpoint,
        do_train=training_args.do_train,
        do_eval=training_args.do_eval,
        do_predict=training_args.do_predict,
        seed=training_args.seed,
        argv=argv,
        arguments=[model_args, data_args, training_args],
        main_process_first=training_args.main_process_first,
    )
    resume_from, raw, tokenizer, model, tokenized = (
        setup.resume_from, setup.raw, setup.tokenizer, setup.model, setup.tokenized
    )

    # Generation settings for evaluation and prediction.
    generation = generation_settings(data_args, training_args.generation_max_length, training_args.generation_num_beams)
    training_args.generation_max_length = generation["max_length"]
    training_args.generation_num_beams = generation["num_beams"]

    pad_multiple = 8 if (training_args.fp16 or training_args.bf16) and not data_args.pad_to_max_length else None
    trainer = SeqtuneTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized.get("train"),
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=build_collator(tokenizer, model, data_args, pad_multiple),
        compute_metrics=build_compute_metrics(tokenizer) if training_args.predict_with_generate else None,
    )

    results: dict = {}
    model_files = None
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=resume_from)
        model_files = save_final_model(trainer.save_model, training_args.output_dir)
        metrics = dict(train_result.metrics, train_samples=len(tokenized["train"]))
        log_metrics("train", metrics)
        write_results(training_args.output_dir, "train", metrics)
        if trainer.is_world_process_zero():
            trainer.state.save_to_json(os.path.join(training_args.output_dir, "trainer_state.json"))
        results.update(metrics)

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate(metric_key_prefix="eval")
        metrics["eval_samples"] = len(tokenized["validation"])
        log_metrics("eval", metrics)
        write_results(training_args.output_dir, "eval", metrics)
        results.update(metrics)

    if training_args.do_predict:
        logger.info("*** Predict ***")
        prediction = trainer.predict(tokenized["test"], metric_key_prefix="predict")
        metrics = dict(prediction.metrics, predict_samples=len(tokenized["test"]))
        log_metrics("predict", metrics)
        write_results(training_args.output_dir, "predict", metrics)
        if training_args.predict_with_generate:
            count = write_predictions(training_args.output_dir, decode_token_ids(prediction.predictions, tokenizer))
            logger.info("Wrote %d predictions to %s.", count, os.path.join(training_args.output_dir, "generated_predictions.txt"))
        results.update(metrics)

    finish(
        training_args.output_dir,
        model_args=model_args,
        data_args=data_args,
        setup=setup,
        results=results,
        hyperparameters={
            "learning_rate": training_args.learning_rate,
            "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "num_train_epochs": training_args.num_train_epochs,
            "max_steps": training_args.max_steps,
            "seed": training_args.seed,
        },
        command=["run_summarization.py", *argv],
        trainer="Seq2SeqTrainer",
        model_files=model_files,
    )
    return results


def _mp_fn(index: int) -> None:
    """Entry point for xla_spawn.py (one call per TPU core)."""
    main()


if __name__ == "__main__":
    main()
