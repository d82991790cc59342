"""The Trainer recipe's FSDP where transformers has none: a Seq2SeqTrainer over a model seqtune sharded itself.

transformers' Trainer runs --fsdp through accelerate's FSDP plugin, which accelerate enables on GPUs only: on CPUs
the run would silently be plain DDP. There `seqtune.sharding.trainer_fsdp` switches the Trainer's FSDP off and
`build_trainer` shards the model with FSDP2 before the Trainer sees it (`seqtune.fsdp.shard_for_training`, the
Accelerate recipe's sharding). `ShardedTraining` then does for that model what the plugin's path does:

- accelerate prepares the model without wrapping it in DDP (FSDP2 reduce-scatters the gradients itself) and without
  moving it; the Trainer builds its optimizer on the shards;
- a checkpoint holds the model and optimizer state as torch.distributed.checkpoint shards (`fsdp.save_sharded`,
  each process its own: the Accelerate recipe's layout), the schedule, the RNG states and the trainer state, but
  no gathered model; a resumed run loads the shards (resharded when it runs on another number of processes);
- the final model is gathered on the main process only (`fsdp.full_state_dict`) into an ordinary folder;
- each evaluation or prediction gathers the whole-model group first (`fsdp.prepare_for_generation`) and frees it
  after; generation keeps the processes in step.
"""

from __future__ import annotations

import logging
import os

import torch

from . import fsdp

logger = logging.getLogger(__name__)

SCHEDULER_FILE = "scheduler.pt"  # transformers' name (trainer_utils.SCHEDULER_NAME)


class ShardedTraining:
    """Mixin for SeqtuneTrainer: a model sharded by seqtune (FSDP2) trained, checkpointed and saved by the
    Trainer. Every method falls through to the Trainer's for any other model."""

    @property
    def sharded_by_seqtune(self) -> bool:
        return fsdp.is_sharded_by_seqtune(self.model)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        prepare_model = self.accelerator.prepare_model

        def prepare_without_ddp(model, device_placement=None, evaluation_mode=False):
            if fsdp.is_sharded_by_seqtune(model):  # FSDP2 reduces the gradients: no DDP on top; placed already
                return prepare_model(model, device_placement=False, evaluation_mode=True)
            return prepare_model(model, device_placement, evaluation_mode)

        self.accelerator.prepare_model = prepare_without_ddp

    def _move_model_to_device(self, model, device) -> None:
        if not fsdp.is_sharded_by_seqtune(model):  # the shards are on their device (`.to()` would fail on them)
            super()._move_model_to_device(model, device)

    # --- checkpoints: DCP shards of the model and optimizer -------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not self.sharded_by_seqtune:
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self._writing_checkpoint:  # every process writes its shards; the main one the config and tokenizer
            fsdp.save_sharded(self.model, self.optimizer.optimizer, output_dir)
            if self.args.should_save:
                self._save_settings(output_dir)
            return
        state = fsdp.full_state_dict(self.model)  # every process takes part; the main one gets the weights
        if self.args.should_save:
            self.model.save_pretrained(output_dir, state_dict=state)
            self._save_settings(output_dir)
        self.accelerator.wait_for_everyone()

    def _save_settings(self, output_dir: str) -> None:
        """What the Trainer saves beside the weights: the model's config, the tokenizer, the arguments."""
        self.model.config.save_pretrained(output_dir)
        if getattr(self.model, "generation_config", None) is not None:
            self.model.generation_config.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.sharded_by_seqtune:
            return super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:  # the optimizer's state is in the shards (save_model)
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        fsdp.check_same_sharding(resume_from_checkpoint, self.sharded_by_seqtune)
        if not self.sharded_by_seqtune:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        # sharded: loaded with the optimizer's state (_load_optimizer_and_scheduler), once the optimizer exists

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not self.sharded_by_seqtune:
            return super()._load_optimizer_and_scheduler(checkpoint)
        fsdp.load_sharded(self.model, self.optimizer.optimizer, checkpoint)
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_FILE), weights_only=True))

    def _load_best_model(self) -> None:
        if not self.sharded_by_seqtune:
            return super()._load_best_model()
        best = self.state.best_model_checkpoint
        logger.info("Loading the best model from %s (score: %s).", best, self.state.best_metric)
        fsdp.load_sharded(self.model, self.optimizer.optimizer, best)

    # --- evaluation: the whole-model group gathered for it --------------------------------------
    def evaluation_loop(self, *args, **kwargs):
        if not self.sharded_by_seqtune:
            return super().evaluation_loop(*args, **kwargs)
        fsdp.prepare_for_generation(self.model)
        try:
            return super().evaluation_loop(*args, **kwargs)
        finally:
            fsdp.end_generation(self.model)
