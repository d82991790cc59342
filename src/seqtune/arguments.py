"""Every flag of every recipe, as dataclasses with help text; each value is checked here, once.

`ModelArguments` and `DataArguments` are the same objects for the Trainer and the
Accelerate scripts; each recipe adds its own dataclass on the shared `OutputArguments`
(`TrainerArguments`: transformers' Seq2SeqTrainingArguments plus older flags;
`LoopArguments`: the Hugging Face no_trainer script's flags). `parse_arguments` reads them
from the command line (`--flag 4` and `--flag=4`) or from one JSON/YAML file given as the
only argument. Nothing is written before every value has been checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import math
import os
import sys
from dataclasses import MISSING, dataclass, field, fields

from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from .errors import UserError
from .runtime import accelerator_available

logger = logging.getLogger(__name__)

CONFIG_FILE_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class ModelArguments:
    """Which model, config and tokenizer to fine-tune from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub model id (e.g. google-t5/t5-small) or path to a local model folder."},
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config name or path, if not the same as model_name_or_path."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer name or path, if not the same as model_name_or_path."}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where to store models and data sets downloaded from the hub."}
    )
    use_fast_tokenizer: bool = field(
        default=True, metadata={"help": "Use a fast (tokenizers-backed) tokenizer when one exists."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "Model version to use: a branch name, tag or commit id."}
    )
    token: str | None = field(
        default=None,
        metadata={
            "help": "Hub token for private models and data sets (default: HF_TOKEN or the stored "
            "`hf auth login`). Never written to any output file."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow models and data sets defined by code in their hub repository. Only for "
            "repositories you trust: that code runs on your machine."
        },
    )
    resize_position_embeddings: bool | None = field(
        default=None,
        metadata={
            "help": "Resize the model's position embeddings when --max_source_length is larger "
            "than they allow (default: resize, with a warning, where the model can; False: refuse)."
        },
    )
    model_type: str | None = field(
        default=None,
        metadata={
            "help": "Train from scratch: without --model_name_or_path, a new model of this type (e.g. t5, bart) "
            "with its default config and random weights (--config_name gives the config instead; "
            "--tokenizer_name is then required). Ignored with --model_name_or_path."
        },
    )
    use_slow_tokenizer: bool = field(
        default=False,
        metadata={"help": "Use the slow (Python) tokenizer: the same as --use_fast_tokenizer False."},
    )
    # LoRA adapters (PEFT): seqtune.adapters.
    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train LoRA adapters (PEFT) instead of every weight: the output dir holds the adapter "
            "(megabytes; loadable with peft.PeftModel), checkpoints hold it and its optimizer state only."
        },
    )
    lora_r: int | None = field(
        default=None, metadata={"help": "LoRA rank (implies --use_peft; default 8 with --use_peft)."}
    )
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA scaling alpha: updates are scaled by alpha / r (default: 2 x r)."}
    )
    lora_dropout: float | None = field(
        default=None, metadata={"help": "Dropout on the LoRA path's input, from 0 to below 1 (default 0.05)."}
    )
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Names of the Linear layers that get adapters, space- or comma-separated, or all-linear "
            "(default per model type: q,v for T5 and mT5; q_proj,v_proj for BART, mBART, Pegasus, Marian)."
        },
    )
    merge_adapter: bool = field(
        default=False,
        metadata={
            "help": "With --use_peft: also write the base model with the adapter merged into it, a full model "
            "folder, to OUTPUT_DIR/merged."
        },
    )

    def __post_init__(self):
        if self.use_slow_tokenizer:
            self.use_fast_tokenizer = False
        self._check_lora()
        if self.model_type is not None:
            from transformers import CONFIG_MAPPING

            if self.model_type not in CONFIG_MAPPING:
                raise UserError(
                    f"--model_type {self.model_type!r} is not a model type transformers knows"
                    f"{_suggestion(self.model_type, CONFIG_MAPPING.keys())}. Fix: pass an encoder-decoder "
                    f"type such as t5, bart, pegasus or mt5."
                )

    def _check_lora(self) -> None:
        """--lora_r implies --use_peft; the other LoRA flags need it; defaults r=8, alpha=2r, dropout 0.05."""
        if self.lora_r is not None:
            if self.lora_r < 1:
                raise UserError(f"--lora_r must be at least 1, got {self.lora_r}.")
            self.use_peft = True
        if not self.use_peft:
            given = [name for name in ("lora_alpha", "lora_dropout", "lora_target_modules") if getattr(self, name)]
            given += ["merge_adapter"] if self.merge_adapter else []
            if given:
                raise UserError(
                    f"--{given[0]} is a LoRA setting, but LoRA is off. Fix: pass --use_peft (or --lora_r N) to "
                    f"train LoRA adapters, or drop --{given[0]}."
                )
            return
        if not self.model_name_or_path and (self.config_name or self.model_type):
            raise UserError(
                "--use_peft adapts a pre-trained model, but none was given (--config_name/--model_type train one "
                "from scratch). Fix: pass --model_name_or_path, or drop --use_peft to train every weight."
            )
        self.lora_r = self.lora_r or 8
        self.lora_alpha = 2.0 * self.lora_r if self.lora_alpha is None else self.lora_alpha
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise UserError(f"--lora_alpha must be a positive number, got {self.lora_alpha}.")
        self.lora_dropout = 0.05 if self.lora_dropout is None else self.lora_dropout
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"--lora_dropout must be from 0 to below 1, got {self.lora_dropout}.")
        if self.lora_target_modules is not None:
            names = [name.strip() for item in self.lora_target_modules for name in str(item).split(",")]
            self.lora_target_modules = [name for name in names if name]
            if not self.lora_target_modules:
                raise UserError("--lora_target_modules is empty. Fix: name the layers (e.g. q,v), or leave it out.")


@dataclass
class DataArguments:
    """Where the data comes from, which columns to use, and how to preprocess it."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub data set name (e.g. cnn_dailymail) or path to a local data set folder."},
    )
    dataset_config_name: str | None = field(
        default=None,
        metadata={"help": "Data set configuration (e.g. 3.0.0).", "aliases": ["--dataset_config"]},
    )
    text_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with the full text to summarize (default: known per data set, else the first column)."
        },
    )
    summary_column: str | None = field(
        default=None,
        metadata={"help": "Column with the reference summary (default: known per data set, else the second column)."},
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Training data: a .csv, .json, .jsonl or .parquet file."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Evaluation data: a .csv, .json, .jsonl or .parquet file."}
    )
    test_file: str | None = field(
        default=None, metadata={"help": "Prediction data: a .csv, .json, .jsonl or .parquet file."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Tokenize again instead of reusing the cached result."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Worker processes for tokenization (default: 1)."}
    )
    max_source_length: int = field(
        default=1024, metadata={"help": "Longest input in tokens after tokenization; longer ones are truncated."}
    )
    max_target_length: int = field(
        default=128, metadata={"help": "Longest training target in tokens; longer ones are truncated."}
    )
    val_max_target_length: int | None = field(
        default=None,
        metadata={"help": "Longest evaluation/prediction target and generation length (default: --max_target_length)."},
    )
    pad_to_max_length: bool = field(
        default=False,
        metadata={
            "help": "Pad every example to the maximum length instead of per batch (needed for static shapes on TPU)."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training examples (for quick trials)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation examples."})
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N prediction (test) examples."}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the data as streams, never loading or caching a split whole (corpora and test sets larger "
            "than memory or disk; each --*_file may be a glob of shards). Training needs a number of steps "
            "(--max_steps, or --max_train_steps for the Accelerate script); a checkpoint resumes mid-stream; "
            "evaluation and prediction read their split window by window."
        },
    )
    shuffle_buffer_size: int = field(
        default=10_000,
        metadata={
            "help": "--streaming: examples read, tokenized and shuffled (length-grouped) together; a resume re-reads "
            "at most one such block. Evaluation and prediction generate windows of this many (at most 2048)."
        },
    )
    skip_bad_rows: bool = field(
        default=False,
        metadata={
            "help": "--streaming: skip malformed rows met mid-stream (counted and logged) instead of stopping "
            "with a message naming the file and line."
        },
    )
    num_beams: int | None = field(
        default=None, metadata={"help": "Beams for generation in evaluation and prediction (default: the model's)."}
    )
    ignore_pad_token_for_loss: bool = field(default=True, metadata={"help": "Ignore padded label tokens in the loss."})
    source_prefix: str | None = field(
        default=None, metadata={"help": 'Text put before every input, e.g. "summarize: " for T5 models.'}
    )
    lang: str | None = field(
        default=None,
        metadata={
            "help": "Language of the texts for multilingual tokenizers (mBART: e.g. en_XX): sets the tokenizer's "
            "source and target language."
        },
    )
    forced_bos_token: str | None = field(
        default=None,
        metadata={
            "help": "Token forced as the first generated token (mBART-50 and the like: the target language, "
            "e.g. de_DE); it must be in the tokenizer's vocabulary."
        },
    )

    @property
    def languages(self) -> tuple[str | None, str | None]:
        """(source, target) language codes for multilingual tokenizers: --lang for both."""
        return self.lang, self.lang

    def __post_init__(self):
        # Whether --val_max_target_length was given (the loop's --max_length gives way to it).
        self._val_max_target_length_given = self.val_max_target_length is not None
        if self.val_max_target_length is None:
            self.val_max_target_length = self.max_target_length
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name} must be at least 1, got {value}.")
        for name in ("max_source_length", "max_target_length", "val_max_target_length"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.shuffle_buffer_size < 1:
            raise UserError(f"--shuffle_buffer_size must be at least 1, got {self.shuffle_buffer_size}.")


@dataclass
class TranslationDataArguments(DataArguments):
    """The translation scripts' data flags: the summarization ones plus the languages and their columns.

    The data is either nested, as the Hugging Face translation scripts read it (a `translation`
    column of {language: text}, e.g. wmt16), or flat (two text columns, --source_column and
    --target_column, defaulting to columns named after the languages, else the first two).
    """

    source_lang: str | None = field(
        default=None,
        metadata={
            "help": "Source language id, e.g. en; for multilingual tokenizers their code (mBART: en_XX, NLLB: "
            "eng_Latn, M2M100: en). Its part before '_' is the key in the nested `translation` column."
        },
    )
    target_lang: str | None = field(
        default=None, metadata={"help": "Target language id, e.g. ro (mBART: ro_RO, NLLB: ron_Latn, M2M100: ro)."}
    )
    source_column: str | None = field(
        default=None,
        metadata={"help": "Flat data: the column with the text to translate (default: a column named --source_lang)."},
    )
    target_column: str | None = field(
        default=None,
        metadata={"help": "Flat data: the column with the reference translation (default: one named --target_lang)."},
    )

    def __post_init__(self):
        super().__post_init__()
        for flag, same in (("source_column", "text_column"), ("target_column", "summary_column")):
            given, other = getattr(self, flag), getattr(self, same)
            if given and other and given != other:
                raise UserError(f"--{flag} {given!r} and --{same} {other!r} name the same column. Fix: pass one.")
            setattr(self, flag, given or other)
            setattr(self, same, given or other)  # the shared core reads the columns under their first names
        if self.lang is not None:
            raise UserError("--lang is for summarization. Fix: pass --source_lang and --target_lang.")

    @property
    def languages(self) -> tuple[str | None, str | None]:
        return self.source_lang, self.target_lang

    @staticmethod
    def data_key(language: str | None) -> str | None:
        """The key of a language in the nested `translation` column: en_XX and eng_Latn are en and eng."""
        return language.split("_")[0] if language else None


# Flags that transformers 5 removed but that the seed document and older commands use.
LEGACY_FLAG_HELP = "(compatibility flag from older transformers; mapped onto today's equivalent)"


def check_mixed_precision(fp16: bool, bf16: bool, use_cpu: bool = False) -> None:
    """Refuse precision flags this machine cannot honour, with the fix in the message."""
    if fp16 and bf16:
        raise UserError(
            "--fp16 and --bf16 were both given. Fix: pass one of them (--bf16 on CPUs and Ampere or newer GPUs)."
        )
    if fp16 and (use_cpu or not accelerator_available()):
        where = "--use_cpu was given" if use_cpu else "none is visible"
        raise UserError(
            f"--fp16 needs a CUDA GPU and {where}. Fix: use --bf16 for mixed precision on a CPU, or drop --fp16."
        )


@dataclass
class OutputArguments:
    """Where a run writes, and whether it may start afresh there: the same for every recipe."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where checkpoints, the final model and all results are written (required)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in a non-empty --output_dir: seqtune's own checkpoints and result files "
            "there are replaced. Without it, a run resumes from the newest complete checkpoint."
        },
    )

    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Resume from this checkpoint folder. Without it, a run in a non-empty --output_dir resumes "
            "from the newest complete checkpoint there."
        },
    )

    def check_output_dir(self) -> None:
        if not self.output_dir:
            raise UserError("--output_dir is required: the folder where the model and results go.")
        self.output_dir = os.path.expanduser(self.output_dir)  # "~/tmp/..." from a config file or a quoted flag
        if self.resume_from_checkpoint:
            self.resume_from_checkpoint = os.path.expanduser(self.resume_from_checkpoint)

    def check_numbers_are_finite(self) -> None:
        """nan and inf parse as floats, then end deep in a run (or in transformers' own checks) as a traceback."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{item.name} must be a finite number, got {value}.")

    def check_at_least_one(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}.")

    def check_not_negative(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 0:
                raise UserError(f"--{name} cannot be negative, got {getattr(self, name)}.")


# --global_batch_size, a flag of both PyTorch recipes (seqtune.batching.apply_global_batch_size)
GLOBAL_BATCH_SIZE_HELP = (
    "Examples per optimizer step, all processes and accumulation together: the gradient accumulation steps are "
    "derived from it (global / (per-device batch x processes)), so that a run resumed on another number of "
    "processes keeps its batch size, data order and loss curve."
)


@dataclass
class TrainerArguments(OutputArguments, Seq2SeqTrainingArguments):
    """transformers' Seq2SeqTrainingArguments plus the flags older commands still pass."""

    push_to_hub_model_id: str | None = field(
        default=None, metadata={"help": f"Same as --hub_model_id {LEGACY_FLAG_HELP}."}
    )
    # A plain flag again (transformers 5 made it `bool | None`, which needs a value after it).
    hub_private_repo: bool = field(
        default=False,
        metadata={
            "help": "With --push_to_hub: create the repository as private (default: the hub's default, public "
            "unless your organization says otherwise). No effect on a repository that already exists."
        },
    )
    evaluation_strategy: str | None = field(
        default=None, metadata={"help": f"Same as --eval_strategy {LEGACY_FLAG_HELP}."}
    )
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "Training order: 'group_by_length' (default in seqtune: random groups of similar length, "
            "less padding, faster), 'random', 'sequential' or 'batch_rebalance'.",
            "choices": ["group_by_length", "random", "sequential", "batch_rebalance"],
        },
    )
    group_by_length: bool = field(
        default=False,
        metadata={"help": f"Same as --train_sampling_strategy group_by_length {LEGACY_FLAG_HELP}."},
    )
    tpu_num_cores: int | None = field(
        default=None,
        metadata={"help": f"Ignored: xla_spawn.py --num_cores sets the TPU cores {LEGACY_FLAG_HELP}."},
    )
    no_cuda: bool = field(default=False, metadata={"help": f"Same as --use_cpu {LEGACY_FLAG_HELP}."})
    global_batch_size: int | None = field(default=None, metadata={"help": GLOBAL_BATCH_SIZE_HELP})
    # --fsdp (or accelerate launch --use_fsdp) on a machine without GPUs: seqtune shards with FSDP2 (set in
    # __post_init__; transformers' --fsdp is then cleared, it would be plain DDP there).
    seqtune_fsdp: bool = field(default=False, init=False, repr=False)

    def __getstate__(self):
        # The Trainer pickles its arguments into training_args.bin (every checkpoint, the final
        # model, hub pushes): tokens (fields ending in _token, as in to_dict) stay out of it.
        return {key: (None if key.endswith("_token") and value else value) for key, value in self.__dict__.items()}

    def __post_init__(self):
        self.check_output_dir()
        self.check_numbers_are_finite()
        self.check_at_least_one(
            "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"
        )
        self.check_not_negative("learning_rate", "weight_decay", "warmup_steps")
        if self.max_steps == 0 or self.max_steps < -1:
            raise UserError(
                f"--max_steps must be at least 1, or -1 (the default) to train --num_train_epochs; "
                f"got {self.max_steps}."
            )
        if self.do_train and self.max_steps < 0 and not self.num_train_epochs > 0:
            raise UserError(
                f"--num_train_epochs must be more than 0 to train, got {self.num_train_epochs}. "
                f"Fix: pass a positive --num_train_epochs or --max_steps, or drop --do_train to only evaluate."
            )
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.push_to_hub_model_id and not self.hub_model_id:
            self.hub_model_id = self.push_to_hub_model_id
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"
        if self.no_cuda:
            self.use_cpu = True
        import torch

        check_mixed_precision(self.fp16, self.bf16, self.use_cpu)  # before anything is written
        if self.global_batch_size is not None:
            self.check_at_least_one("global_batch_size")
        from .sharding import deepspeed_config, trainer_fsdp

        self.seqtune_fsdp = trainer_fsdp(self, accelerator_available())
        if self.deepspeed:  # checked now (exit 2 on a bad config); ZeRO-3's gotchas handled
            self.deepspeed = deepspeed_config(self.deepspeed)
        if not accelerator_available():
            # A CPU-only machine: say so to transformers, or --bf16 is refused and torchrun's
            # processes would not train together (Accelerate picks gloo only when told "cpu").
            self.use_cpu = True
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning only helps copies to a GPU
        try:
            super().__post_init__()
        except ValueError as error:
            raise UserError(f"invalid training arguments: {error}") from None


# The schedules of transformers.get_scheduler that need no extra arguments.
SCHEDULER_TYPES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)


@dataclass
class LoopArguments(OutputArguments):
    """The loop's own flags (those of the Hugging Face no_trainer script, plus a few of the Trainer's)."""

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
        metadata={
            "help": "Mixed precision with bfloat16 (CPUs, Ampere or newer GPUs). Without --fp16/--bf16, "
            "`accelerate launch --mixed_precision` decides."
        },
    )
    torch_compile: bool = field(
        default=False,
        metadata={
            "help": "Compile the model's forward pass with torch.compile (pays off on GPUs for long runs; the "
            "first steps are slower while it compiles). The same flag as the Trainer script's."
        },
    )
    torch_compile_backend: str | None = field(
        default=None, metadata={"help": 'torch.compile backend (implies --torch_compile; default "inductor").'}
    )
    torch_compile_mode: str | None = field(
        default=None,
        metadata={
            "help": 'torch.compile mode (implies --torch_compile): "default", "reduce-overhead", "max-autotune".'
        },
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
        metadata={
            "help": "Seed for initialisation, dropout and the order of the training data (resume needs the same)."
        },
    )
    checkpointing_steps: str | None = field(
        default=None,
        metadata={
            "help": 'Save a resumable checkpoint every N optimizer steps (a number), or after every epoch ("epoch").'
        },
    )
    save_total_limit: int | None = field(
        default=None, metadata={"help": "Keep at most this many checkpoints (the oldest are deleted)."}
    )
    eval_steps: int | None = field(
        default=None,
        metadata={
            "help": "Also evaluate every N optimizer steps (besides after every epoch): with --streaming, a stream "
            "being one long epoch, the way to evaluate during training."
        },
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every N optimizer steps."})
    do_predict: bool = field(
        default=False,
        metadata={
            "help": "After training, generate summaries for the test split (--test_file) "
            "into generated_predictions.txt."
        },
    )
    with_tracking: bool = field(
        default=False, metadata={"help": "Log losses and metrics to experiment trackers (see --report_to)."}
    )
    predict_with_generate: bool = field(
        default=True,
        metadata={
            "help": "Accepted as the Hugging Face translation script has it: this loop always evaluates and "
            "predicts by generating (ROUGE and BLEU need generated text)."
        },
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
        metadata={
            "help": "Upload to the Hugging Face hub: each checkpoint (into last-checkpoint/) and the final model "
            "with its card. The hub and the token are checked before training."
        },
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Hub repository for --push_to_hub (default: named after --output_dir)."}
    )
    hub_token: str | None = field(
        default=None,
        metadata={
            "help": "Token for --push_to_hub (default: HF_TOKEN, then the stored `hf auth login`). "
            "Never written to any file."
        },
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest generated summary (and evaluation target) in tokens: the same as "
            "--val_max_target_length, which wins when both are given (default: --max_target_length, 128)."
        },
    )
    deepspeed: str | None = field(
        default=None,
        metadata={
            "help": "Shard with DeepSpeed ZeRO: a DeepSpeed JSON config (path or inline JSON; e.g. "
            "configs/deepspeed/zero2.json), as the Trainer script's --deepspeed. The same as accelerate launch "
            "--use_deepspeed --deepspeed_config_file CONFIG."
        },
    )
    global_batch_size: int | None = field(default=None, metadata={"help": GLOBAL_BATCH_SIZE_HELP})
    fsdp: bool = field(
        default=False,
        metadata={
            "help": "Shard the model with FSDP (PyTorch's FSDP2: each T5/BART block, then the rest), on GPUs and "
            "CPUs alike; checkpoints are torch.distributed.checkpoint shards, the final model one ordinary "
            "folder. The same as accelerate launch --use_fsdp."
        },
    )

    def __post_init__(self):
        self.check_output_dir()
        self.check_numbers_are_finite()
        if not self.predict_with_generate:
            logger.warning("--predict_with_generate False has no effect: the loop always scores generated text.")
        check_mixed_precision(self.fp16, self.bf16)  # before anything is written
        if self.max_length is not None:
            self.check_at_least_one("max_length")
        self.check_at_least_one(
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "num_train_epochs",
            "logging_steps",
        )
        if self.max_train_steps is not None:
            self.check_at_least_one("max_train_steps")
        if self.global_batch_size is not None:
            self.check_at_least_one("global_batch_size")
        for name in ("save_total_limit", "eval_steps"):
            if getattr(self, name) is not None:
                self.check_at_least_one(name)
        self.check_not_negative("num_warmup_steps", "learning_rate", "weight_decay", "max_grad_norm")
        if self.torch_compile_backend or self.torch_compile_mode:  # as the Trainer's arguments do
            self.torch_compile = True
        if self.deepspeed:  # a missing file, invalid JSON, an unknown stage: refused now (used by the Accelerator)
            from .sharding import read_deepspeed_config

            read_deepspeed_config(self.deepspeed)
        steps = self.checkpointing_steps
        if steps is not None and steps != "epoch" and not (steps.isdigit() and int(steps) > 0):
            raise UserError(f'--checkpointing_steps must be a positive number or "epoch", got {steps!r}.')

    def combine(self, others) -> None:
        """--max_length (the Hugging Face no_trainer script's) is the generation length: --val_max_target_length."""
        data_args = next((other for other in others if isinstance(other, DataArguments)), None)
        if self.max_length is None or data_args is None:
            return
        if getattr(data_args, "_val_max_target_length_given", False):
            if data_args.val_max_target_length != self.max_length:
                logger.warning(
                    "--max_length %d is not used: --val_max_target_length %d sets the generation length.",
                    self.max_length,
                    data_args.val_max_target_length,
                )
            return
        data_args.val_max_target_length = self.max_length

    # The loop always trains and evaluates (the names the shared set-up reads).
    do_train = property(lambda self: True)
    do_eval = property(lambda self: True)

    @property
    def checkpoint_every(self) -> int | None:
        """Steps between checkpoints (None: by epoch or never)."""
        return int(self.checkpointing_steps) if self.checkpointing_steps not in (None, "epoch") else None


@dataclass
class KerasArguments(OutputArguments):
    """The TensorFlow script's flags: those of the Hugging Face TF example (TFTrainingArguments) it is run with."""

    do_train: bool = field(default=False, metadata={"help": "Fine-tune on the training split."})
    do_eval: bool = field(default=False, metadata={"help": "Evaluate (generation + ROUGE) on the validation split."})
    do_predict: bool = field(
        default=False, metadata={"help": "Generate summaries for the test split into generated_predictions.txt."}
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size per device."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (after warm-up)."})
    weight_decay: float = field(
        default=0.0, metadata={"help": "AdamW weight decay (not applied to biases and normalisation weights)."}
    )
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the training data."})
    max_steps: int = field(
        default=-1, metadata={"help": "Total optimizer steps; when positive, overrides --num_train_epochs."}
    )
    warmup_steps: int = field(default=0, metadata={"help": "Optimizer steps of linear warm-up from 0."})
    warmup_ratio: float = field(
        default=0.0, metadata={"help": "Warm-up as a fraction of all steps (when --warmup_steps is 0)."}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the global gradient norm (0: no clipping)."})
    seed: int = field(default=42, metadata={"help": "Seed for initialisation and the order of the training data."})
    save_steps: int = field(
        default=0,
        metadata={"help": "Save a resumable checkpoint every N optimizer steps (0, the default: after every epoch)."},
    )
    save_total_limit: int | None = field(
        default=None, metadata={"help": "Keep at most this many checkpoints (the oldest are deleted)."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every N optimizer steps."})
    predict_with_generate: bool = field(
        default=True,
        metadata={"help": "Accepted as the PyTorch scripts have it: this script always evaluates by generating."},
    )
    xla: bool = field(
        default=False,
        metadata={"help": "Compile the training step with XLA (jit_compile; always on with --tpu)."},
    )
    fp16: bool = field(default=False, metadata={"help": "Mixed precision with float16 (GPUs)."})
    bf16: bool = field(default=False, metadata={"help": "Mixed precision with bfloat16 (TPUs, recent GPUs, CPUs)."})
    tpu: str | None = field(
        default=None,
        metadata={
            "help": "Train on this Cloud TPU (its name or grpc:// address; 'local' on a TPU VM) with TPUStrategy.",
            "aliases": ["--tpu_name"],
        },
    )
    tpu_zone: str | None = field(default=None, metadata={"help": "The TPU's zone (when --tpu is a name)."})
    gcp_project: str | None = field(default=None, metadata={"help": "The TPU's Google Cloud project."})
    report_to: str = field(default="none", metadata={"help": 'Accepted for compatibility; only "none" is used.'})
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "Upload to the Hugging Face hub: each checkpoint and the final model with its card. The hub "
            "and the token are checked before training."
        },
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Hub repository for --push_to_hub (default: named after --output_dir)."}
    )
    push_to_hub_model_id: str | None = field(
        default=None, metadata={"help": f"Same as --hub_model_id {LEGACY_FLAG_HELP}."}
    )
    hub_token: str | None = field(
        default=None,
        metadata={"help": "Token for --push_to_hub (default: HF_TOKEN, then the stored login). Never written."},
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "With --push_to_hub: a private repository."})

    def __post_init__(self):
        self.check_output_dir()
        self.check_numbers_are_finite()
        if self.fp16 and self.bf16:
            raise UserError("--fp16 and --bf16 were both given. Fix: pass one of them.")
        self.check_at_least_one("per_device_train_batch_size", "per_device_eval_batch_size", "logging_steps")
        self.check_not_negative(
            "learning_rate", "weight_decay", "warmup_steps", "warmup_ratio", "max_grad_norm", "save_steps"
        )
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise UserError("--num_train_epochs must be positive (or pass --max_steps N).")
        if self.save_total_limit is not None:
            self.check_at_least_one("save_total_limit")
        if self.push_to_hub_model_id and not self.hub_model_id:
            self.hub_model_id = self.push_to_hub_model_id


def _plain(value):
    """A setting as a person would compare it: enums by value; unset, empty and "none" alike."""
    value = getattr(value, "value", value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and value == type(value)():
        return None  # a default-constructed settings object (accelerator_config)
    if value is False or value in ("", "none", [], {}, ()) or value is None:
        return None
    return value


def changed_arguments(arguments) -> dict:
    """The fields of a dataclass that differ from their defaults (tokens left out): what a log line
    should show of a run's settings; all of them are saved in seqtune_args.json."""
    changed = {}
    for f in fields(arguments):
        if f.name.endswith("token") or not f.init:
            continue
        if f.default is not MISSING:
            default = f.default
        else:
            default = f.default_factory() if f.default_factory is not MISSING else None
        value = getattr(arguments, f.name, None)
        if _plain(value) != _plain(default):
            changed[f.name] = getattr(value, "value", value)
    return changed


def _normalise_config_keys(config: dict, dataclass_types) -> dict:
    """Accept a flag's alias (e.g. dataset_config) as a key in a config file."""
    aliases = {}
    for dataclass_type in dataclass_types:
        for f in fields(dataclass_type):
            for alias in f.metadata.get("aliases", []) or []:
                aliases[alias.lstrip("-")] = f.name
    return {aliases.get(key, key): value for key, value in config.items()}


def _read_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"config file {path} does not exist.")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        if path.endswith(".json"):
            config = json.loads(text)
        else:
            import yaml

            config = yaml.safe_load(text)
    except (json.JSONDecodeError, ValueError) as error:
        raise UserError(f"config file {path} is not valid JSON: {error}") from None
    except Exception as error:  # yaml.YAMLError carries the line and column
        raise UserError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise UserError(f"config file {path} must hold a mapping of flag names to values.")
    return config


def _usage_error(message: str):
    raise UserError(f"{message}. Run with -h to list the flags.")


def _suggestion(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _coerce(value, action: argparse.Action, where: str, takes_dict: bool = False):
    """A config file's value as the command line would have turned its text into the flag's value."""
    if value is None:
        if action.default is not None:  # the command line cannot make this flag empty either
            raise UserError(
                f"{where} is empty (null). Fix: write a value, or leave the key out for its "
                f"default ({getattr(action.default, 'value', action.default)!r})."
            )
        return None
    if isinstance(value, dict):
        if takes_dict:  # a JSON-valued flag (accelerator_config, lr_scheduler_kwargs)
            return value
        raise UserError(f"{where}: got a mapping ({value!r}), expected one value. Fix: write one value.")
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        return [_coerce_one(item, action, where) for item in (value if isinstance(value, list) else [value])]
    return _coerce_one(value, action, where)


def _coerce_one(value, action: argparse.Action, where: str):
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or action.const is True:
        text = str(value).lower()
        if text not in ("true", "false", "yes", "no", "1", "0"):
            raise UserError(f"{where}: {value!r} is not true or false. Fix: write true or false.")
        return text in ("true", "yes", "1")
    convert = action.type
    if isinstance(value, (list, bool)) and convert in (int, float, str):
        kind = "a list" if isinstance(value, list) else "true/false"
        raise UserError(f"{where}: got {kind} ({value!r}), expected {convert.__name__}. Fix: write one value.")
    try:
        converted = convert(str(value)) if convert is not None else value
    except (TypeError, ValueError, KeyError, argparse.ArgumentTypeError):
        name = getattr(convert, "__name__", "a value of this flag")
        raise UserError(
            f"{where}: {value!r} is not a valid {name}. Fix: write a {name}, e.g. as on the command "
            f"line (run with -h to see the flag's type)."
        ) from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(str(getattr(choice, "value", choice)) for choice in action.choices)
        raise UserError(f"{where}: {value!r} is not one of {choices}.")
    return converted


def _config_values(config: dict, parser: HfArgumentParser, path: str) -> dict:
    """The config file's values checked and typed as the command line would: unknown keys are refused
    (with the closest flag), values converted by each flag's own type, choices checked."""
    actions = {action.dest: action for action in parser._actions if action.option_strings and action.dest != "help"}
    for key in config:
        if key not in actions:
            raise UserError(
                f"config file {path}: unknown key {key!r}{_suggestion(key, actions)}. "
                f"Fix: use the flag names without the leading -- (run with -h to list them)."
            )
    # From the annotations as written: HfArgumentParser rewrites the fields' own types (dict | str → str).
    takes_dict = {
        name
        for dtype in parser.dataclass_types
        for cls in dtype.__mro__
        for name, annotation in vars(cls).get("__annotations__", {}).items()
        if "dict" in str(annotation).lower()
    }
    return {
        key: _coerce(value, actions[key], f"config file {path}, key {key!r}", key in takes_dict)
        for key, value in config.items()
    }


def parse_arguments(dataclass_types, argv: list[str] | None = None, prog: str | None = None):
    """Parse the command line (or a single JSON/YAML config file) into the dataclasses, every value checked."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types, prog=prog)
    parser.error = _usage_error  # one line, not the usage of 160 flags before it
    if len(argv) == 1 and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        path = os.path.abspath(argv[0])
        config = _config_values(_normalise_config_keys(_read_config_file(path), dataclass_types), parser, path)
        try:
            return _combined(parser.parse_dict(config, allow_extra_keys=False))
        except (UserError, ValueError, TypeError) as error:  # range checks name the flag; say which file too
            raise UserError(f"config file {path}: {error}") from None
    _, unknown = parser.parse_known_args(argv)  # argparse's own mistakes (bad values) exit 2 with usage here
    if unknown:
        flags = [flag for action in parser._actions for flag in action.option_strings]
        first = next((arg for arg in unknown if arg.startswith("-")), unknown[0])
        hint = _suggestion(first.split("=", 1)[0], flags) if first.startswith("-") else ""
        raise UserError(
            f"unknown argument{'s' if len(unknown) > 1 else ''} {' '.join(unknown)}{hint}. "
            f"Run with -h to list the flags."
        )
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    except (ValueError, TypeError) as error:
        raise UserError(f"{error}. Run with -h to list the flags.") from None
    return _combined(parsed)


def _combined(parsed):
    """Let a dataclass whose flag sets another one's value (the loop's --max_length) apply it."""
    for arguments in parsed:
        combine = getattr(arguments, "combine", None)
        if callable(combine):
            combine(parsed)
    return parsed
