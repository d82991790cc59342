"""The Keras recipe: fine-tune a seq2seq model with TensorFlow's Keras `fit`.

`main` reads top to bottom: arguments, the distribution strategy (all GPUs with MirroredStrategy,
a Cloud TPU with TPUStrategy), set up (output dir, data, model: the shared core), train, evaluate,
predict, wrap up (report, card, hub). Data loading and validation, ROUGE, checkpoint publishing,
results files, the run log and the model card are the PyTorch recipes'; what is TensorFlow's is
here: the strategy, the training step, generation and the checkpoint's optimizer state.

Runs in `.venv-tf` (requirements-tf.txt: TensorFlow, tf-keras, transformers 4.x). Models come
from, and go to, PyTorch-format folders (`seqtune.tf_modeling`).
"""

from __future__ import annotations

import os

# transformers 4's TF models are Keras 2 models (tf-keras); TF's C++ start-up chatter is not news.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ..arguments import KerasArguments, ModelArguments, parse_arguments  # noqa: E402
from ..checkpoints import (  # noqa: E402
    check_same_model,
    checkpoint_name,
    guarded_save,
    publish_checkpoint,
    rotate_checkpoints,
    staging_path,
)
from ..errors import UserError, exit_on_user_error  # noqa: E402
from ..generation import evaluate_in_windows, predict_to_file  # noqa: E402
from ..hub import HubPusher  # noqa: E402
from ..metrics import decode_token_ids  # noqa: E402
from ..outputs import save_final_model  # noqa: E402
from ..report import RunLog  # noqa: E402
from ..runtime import setup_logging  # noqa: E402
from ..tasks import SUMMARIZATION, Task, task_of  # noqa: E402
from ..tf_modeling import create_tf_model, pytorch_weight_shapes, read_pytorch_weights, save_pytorch_format  # noqa: E402
from .common import generation_settings, record_results, set_up_run, wrap_up_run  # noqa: E402

logger = logging.getLogger(__name__)

SCRIPT = "examples/tensorflow/summarization/run_summarization.py"
STATE_FILE = "keras_state.json"  # a checkpoint's place in training (the global step; epoch and batch follow from it)
OPTIMIZER_PREFIX = "optimizer"  # the optimizer's variables (tf.train.Checkpoint files optimizer.*)
MODEL_INPUTS = ("input_ids", "attention_mask", "labels")
LENGTH_BUCKET = 16  # training batches are padded to a multiple of this: few distinct shapes, few compilations
GENERATION_BUCKET = 64  # and generation batches to a multiple of this (each shape is one XLA compilation)
# A machine without GPUs can still try MirroredStrategy: split its CPU into this many logical devices.
CPU_DEVICES_ENV = "SEQTUNE_TF_CPU_DEVICES"


@exit_on_user_error
def main(argv: list[str] | None = None, task: Task = SUMMARIZATION) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, args = parse_arguments(
        (ModelArguments, task.data_arguments, KerasArguments), argv, prog=SCRIPT
    )
    setup_logging()
    refuse_what_keras_cannot_do(model_args, data_args)
    strategy = distribution_strategy(args)  # --tpu: found and started, or one message, before anything is written
    if args.tpu:
        data_args.pad_to_max_length = True  # TPUs compile one program per shape: every batch the same shape
    set_precision(args)
    hub = HubPusher.from_arguments(args, model_args)  # --push_to_hub: checked in set_up_run, before anything
    with strategy.scope():
        setup = set_up_run(
            model_args,
            data_args,
            args,
            command=[SCRIPT, *argv],
            hub=hub,
            create_model=create_tf_model,
            check_checkpoint=check_same_tf_model,
        )
    model, tokenizer, tokenized, output_dir = setup.model, setup.tokenizer, setup.tokenized, args.output_dir
    generation = generation_settings(data_args)
    scorer = task_of(data_args).scorer

    results: dict = {}
    model_files = None
    if args.do_train:
        plan = TrainingPlan.of(args, len(tokenized["train"]), strategy.num_replicas_in_sync)
        with strategy.scope():
            trainer = TokenMeanTrainer(model)
            trainer.compile(optimizer=build_optimizer(args, plan), jit_compile=bool(args.xla or args.tpu))
            trainer.optimizer.build(model.trainable_variables)
        start = restore_checkpoint(trainer, setup.resume_from) if setup.resume_from else 0
        metrics = train(trainer, tokenized["train"], tokenizer, data_args, args, plan, start, hub)
        model_files = save_final_model(lambda folder: save_pytorch_format(model, tokenizer, folder), output_dir)
        metrics.update(train_samples=len(tokenized["train"]), tokenize_runtime=setup.tokenize_runtime)
        record_results(output_dir, "train", metrics, results)
    if args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = generate_and_score(model, tokenizer, tokenized["validation"], args, generation, scorer(), "eval")
        # The Hugging Face TF script writes its scores without the prefix: scripts that read them keep working.
        metrics.update({name: metrics[f"eval_{name}"] for name in scorer.names})
        record_results(output_dir, "eval", metrics, results)
    if args.do_predict:
        logger.info("*** Predict ***")
        metrics = generate_and_score(
            model, tokenizer, tokenized["test"], args, generation, scorer(), "predict", output_dir
        )
        record_results(output_dir, "predict", metrics, results)
        RunLog(output_dir).append({**metrics, "event": "predict"})
    wrap_up_run(
        model_args,
        data_args,
        args,
        setup=setup,
        results=results,
        hyperparameters={"num_train_epochs": args.num_train_epochs, "max_steps": args.max_steps},
        command=[SCRIPT, *argv],
        trainer="Keras fit (TensorFlow)",
        model_files=model_files,
        hub=hub,
    )
    return results


# --------------------------------------------------------------------------- set-up


def refuse_what_keras_cannot_do(model_args: ModelArguments, data_args) -> None:
    """Flags of the PyTorch scripts this one does not have: one message each, before anything runs."""
    if getattr(model_args, "use_peft", False):
        raise UserError(
            "--use_peft (LoRA) is for the PyTorch scripts only. Fix: use examples/pytorch/summarization/"
            "run_summarization.py with the same flags, or leave out --use_peft."
        )
    if data_args.streaming:
        raise UserError(
            "--streaming is for the PyTorch scripts only. Fix: use examples/pytorch/summarization/"
            "run_summarization.py --streaming --max_steps N, or leave out --streaming."
        )


def distribution_strategy(args: KerasArguments):
    """TPUStrategy with --tpu; MirroredStrategy over every visible GPU when there are several; else the default."""
    if args.tpu:
        return tpu_strategy(args)
    cpu_devices = int(os.environ.get(CPU_DEVICES_ENV, "0") or 0)
    if cpu_devices > 1:  # tests and trials of the multi-device path on a machine without GPUs
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
        devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        logger.info("MirroredStrategy over %d logical CPU devices (%s).", len(devices), CPU_DEVICES_ENV)
        return tf.distribute.MirroredStrategy(devices)
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        logger.info("MirroredStrategy over %d GPUs.", strategy.num_replicas_in_sync)
        return strategy
    logger.info("Training on one device (%s).", "GPU" if gpus else "CPU")
    return tf.distribute.get_strategy()


def tpu_strategy(args: KerasArguments):
    """Resolve --tpu, connect to it and start its system; a TPU that cannot be reached is one message."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=args.tpu, zone=args.tpu_zone, project=args.gcp_project
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:  # OSError: the metadata server
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"--tpu {args.tpu}: no TPU could be reached ({first_line}). Fix: run on the TPU VM or in the project "
            f"and zone of that TPU (--tpu_zone, --gcp_project), pass --tpu local on a TPU VM, or leave out --tpu "
            f"to train on this machine's GPUs or CPU."
        ) from None
    strategy = tf.distribute.TPUStrategy(resolver)
    logger.info("TPUStrategy on %s: %d cores.", args.tpu, strategy.num_replicas_in_sync)
    return strategy


def set_precision(args: KerasArguments) -> None:
    """--fp16 / --bf16: Keras' mixed-precision policy (float32 weights, 16-bit compute)."""
    if args.fp16 and not tf.config.list_physical_devices("GPU"):
        raise UserError("--fp16 needs a GPU and none is visible. Fix: use --bf16 on a CPU or TPU, or drop --fp16.")
    if args.fp16 or args.bf16:
        tf.keras.mixed_precision.set_global_policy("mixed_float16" if args.fp16 else "mixed_bfloat16")


def check_same_tf_model(checkpoint: str, model, model_name: str | None = None) -> None:
    """`checkpoints.check_same_model` for the TF model: its weights under their PyTorch names and shapes."""
    check_same_model(checkpoint, model, model_name, shapes=pytorch_weight_shapes(model))


# --------------------------------------------------------------------------- training


class TrainingPlan:
    """How many optimizer steps a run takes and how they fall into epochs."""

    def __init__(self, global_batch: int, batches_per_epoch: int, total_steps: int, warmup_steps: int):
        self.global_batch, self.batches_per_epoch = global_batch, batches_per_epoch
        self.total_steps, self.warmup_steps = total_steps, warmup_steps

    @classmethod
    def of(cls, args: KerasArguments, examples: int, replicas: int) -> TrainingPlan:
        global_batch = args.per_device_train_batch_size * replicas
        # A TPU needs every batch full (static shapes); elsewhere the last, partial batch trains too.
        batches = examples // global_batch if args.tpu else math.ceil(examples / global_batch)
        if batches < 1:
            raise UserError(
                f"the training split has {examples} examples, fewer than one batch of {global_batch} "
                f"(--per_device_train_batch_size x {replicas} devices). Fix: lower --per_device_train_batch_size."
            )
        total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * batches)
        warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total)
        return cls(global_batch, batches, total, warmup)


def build_optimizer(args: KerasArguments, plan: TrainingPlan):
    """AdamW (no decay on biases and layer norms) with linear warm-up then linear decay, as the Trainer's default."""
    from transformers import create_optimizer

    optimizer, _ = create_optimizer(
        init_lr=args.learning_rate,
        num_train_steps=plan.total_steps,
        num_warmup_steps=plan.warmup_steps,
        weight_decay_rate=args.weight_decay,
        adam_global_clipnorm=args.max_grad_norm or None,
    )
    return optimizer


class TokenMeanTrainer(tf.keras.Model):
    """Trains the wrapped seq2seq model on the mean loss over every target token of the global batch.

    The models' own loss is a per-device mean, which Keras then averages over devices: two devices
    holding different numbers of target tokens would weigh them differently than one device does.
    Here each device divides its summed loss by the token count of all devices (gradients are summed
    over devices), so N devices train exactly as one on the same global batch.
    """

    def __init__(self, seq2seq):
        super().__init__()
        self.seq2seq = seq2seq
        # Keras sums what the devices' steps return (TPUs: takes the first device's): each device's share of the
        # global mean makes the logged loss that mean in both cases.
        strategy = tf.distribute.get_strategy()
        tpu = isinstance(strategy, tf.distribute.TPUStrategy)
        self.loss_share = 1.0 if tpu else 1.0 / strategy.num_replicas_in_sync

    def call(self, inputs, training=False):
        return self.seq2seq(**inputs, training=training).logits

    def train_step(self, batch):
        labels = batch["labels"]
        mask = tf.cast(tf.not_equal(labels, -100), tf.float32)
        context = tf.distribute.get_replica_context()
        tokens = tf.maximum(context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(mask)), 1.0)
        with tf.GradientTape() as tape:
            logits = self(batch, training=True)
            summed = token_loss_sums(logits, labels, mask)
            loss = tf.reduce_sum(summed) / tokens
            scaled = self.optimizer.get_scaled_loss(loss) if hasattr(self.optimizer, "get_scaled_loss") else loss
        gradients = tape.gradient(scaled, self.seq2seq.trainable_variables)
        if hasattr(self.optimizer, "get_unscaled_gradients"):  # --fp16: Keras' loss scaling
            gradients = self.optimizer.get_unscaled_gradients(gradients)
        self.optimizer.apply_gradients(zip(gradients, self.seq2seq.trainable_variables))
        mean = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(summed)) / tokens
        return {"loss": mean * self.loss_share}


def token_loss_sums(logits, labels, mask):
    """Each example's cross-entropy summed over its target tokens (labels -100 are padding), in float32."""
    losses = tf.keras.losses.sparse_categorical_crossentropy(
        tf.maximum(labels, 0), tf.cast(logits, tf.float32), from_logits=True
    )
    return tf.reduce_sum(losses * mask, axis=-1)


def collator(tokenizer, pad_to_max_length: bool, multiple: int = LENGTH_BUCKET):
    """Pads a batch to its longest example, rounded up to `multiple` (fixed lengths with --pad_to_max_length)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(
        tokenizer,
        label_pad_token_id=-100,
        pad_to_multiple_of=None if pad_to_max_length else multiple,
        return_tensors="np",
    )


def rows(dataset, indices) -> list[dict]:
    columns = dataset[list(indices)]
    names = [name for name in MODEL_INPUTS if name in columns]
    return [dict(zip(names, values)) for values in zip(*(columns[name] for name in names))]


def epoch_order(examples: int, seed: int, epoch: int) -> list[int]:
    """The training order of an epoch: the same for the same seed and epoch, so a resumed run reads the same."""
    return np.random.default_rng([seed, epoch]).permutation(examples).tolist()


def training_batches(dataset, collate, plan: TrainingPlan, seed: int, start: int):
    """A tf.data.Dataset of the batches of steps `start` to the end, across epochs, collated as they are read.

    One dataset for the whole run, so Keras `fit` is called once (a second `fit` call on the same model
    ran a step its callbacks never saw). Each epoch's order depends on the seed and the epoch only, so a
    run resumed at any step reads what an unbroken run reads from there.
    """

    def generate():
        order = None
        for step in range(start, plan.total_steps):
            epoch, number = divmod(step, plan.batches_per_epoch)
            if order is None or number == 0:
                order = epoch_order(len(dataset), seed, epoch)
            yield dict(collate(rows(dataset, order[number * plan.global_batch : (number + 1) * plan.global_batch])))

    columns = [name for name in MODEL_INPUTS if name in dataset.column_names]
    spec = {name: tf.TensorSpec([None, None], tf.int64) for name in columns}
    return tf.data.Dataset.from_generator(generate, output_signature=spec).prefetch(2)


def train(trainer, dataset, tokenizer, data_args, args: KerasArguments, plan: TrainingPlan, start: int, hub) -> dict:
    """Keras `fit` from step `start` to the end; checkpoints every --save_steps (or epoch)."""
    collate = collator(tokenizer, data_args.pad_to_max_length)
    callback = StepCallback(trainer, tokenizer, args, plan, hub)
    run_log = RunLog(args.output_dir)
    run_log.start(start)
    logger.info(
        "Training %d steps (%d per epoch, global batch %d) from step %d.",
        plan.total_steps,
        plan.batches_per_epoch,
        plan.global_batch,
        start,
    )
    started = time.time()
    if start < plan.total_steps:
        batches = training_batches(dataset, collate, plan, args.seed, start)
        trainer.fit(batches, epochs=1, verbose=0, callbacks=[callback])
    if callback.failed:
        raise UserError(callback.failed)
    runtime = time.time() - started
    trained = plan.total_steps - start
    return {
        "train_loss": round(callback.mean_loss(), 4),
        "train_runtime": round(runtime, 4),
        "train_samples_per_second": round(trained * plan.global_batch / max(runtime, 1e-9), 3),
        "train_steps_per_second": round(trained / max(runtime, 1e-9), 3),
        "epoch": round(plan.total_steps / plan.batches_per_epoch, 4),
        "global_step": plan.total_steps,
    }


class StepCallback(tf.keras.callbacks.Callback):
    """After each optimizer step: the loss into the run log every --logging_steps, a checkpoint every
    --save_steps (or at the end of each epoch), and a stop at the first non-finite loss."""

    def __init__(self, trainer, tokenizer, args: KerasArguments, plan: TrainingPlan, hub):
        super().__init__()
        self.trainer, self.tokenizer, self.args, self.plan, self.hub = trainer, tokenizer, args, plan, hub
        self.run_log = RunLog(args.output_dir)
        self.window: list[float] = []  # losses since the last log line
        self.total, self.steps = 0.0, 0  # for train_loss: the mean over this run's steps
        self.failed: str | None = None

    def mean_loss(self) -> float:
        return self.total / max(self.steps, 1)

    def on_train_batch_end(self, batch, logs=None):
        loss = float(logs["loss"])
        step = int(self.trainer.optimizer.iterations.numpy())
        if not math.isfinite(loss):
            self.failed = (
                f"the training loss became {loss} at step {step}. Fix: lower --learning_rate, or drop --fp16; "
                f"run the same command again to resume from the last checkpoint."
            )
            self.trainer.stop_training = True
            return
        self.window.append(loss)
        self.total, self.steps = self.total + loss, self.steps + 1
        if step % self.args.logging_steps == 0 or step == self.plan.total_steps:
            record = {
                "loss": round(sum(self.window) / len(self.window), 4),
                "learning_rate": float(self.trainer.optimizer.learning_rate.numpy()),
                "step": step,
                "epoch": round(step / self.plan.batches_per_epoch, 4),
            }
            self.window = []
            self.run_log.append(record)
            logger.info(
                "step %d/%d: loss=%.4f lr=%.3g", step, self.plan.total_steps, record["loss"], record["learning_rate"]
            )
        end_of_epoch = step % self.plan.batches_per_epoch == 0
        every = self.args.save_steps
        if (step % every == 0 if every else end_of_epoch) and step < self.plan.total_steps:
            save_checkpoint(self.trainer, self.tokenizer, self.args, step, self.hub)


def save_checkpoint(trainer, tokenizer, args: KerasArguments, step: int, hub) -> str:
    """The model (PyTorch format: loadable anywhere), the optimizer and the step, published as checkpoint-`step`.

    Written into staging and made visible by one rename with its manifest (seqtune.checkpoints): a kill
    at any instant leaves the previous checkpoint or this complete one.
    """
    name = checkpoint_name(step)
    staged = staging_path(args.output_dir, step, name)
    shutil.rmtree(staged, ignore_errors=True)  # what a run killed while writing this step left
    with guarded_save(name, args.output_dir, staged=staged):
        save_pytorch_format(trainer.seq2seq, tokenizer, staged)
        tf.train.Checkpoint(optimizer=trainer.optimizer).write(os.path.join(staged, OPTIMIZER_PREFIX))
        with open(os.path.join(staged, STATE_FILE), "w", encoding="utf-8") as handle:
            json.dump({"global_step": step, "seed": args.seed}, handle)
    published = publish_checkpoint(staged, args.output_dir, step, name=name)
    if hub is not None:
        hub.push_checkpoint(published, step)
    rotate_checkpoints(args.output_dir, args.save_total_limit)
    logger.info("Saved %s.", published)
    return published


def restore_checkpoint(trainer, checkpoint: str) -> int:
    """Load a checkpoint's weights and optimizer state into `trainer`; return its step."""
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    state_path = os.path.join(checkpoint, STATE_FILE)
    if not os.path.isfile(state_path):
        raise UserError(
            f"{checkpoint} is not a checkpoint of {SCRIPT} (no {STATE_FILE}: a PyTorch script's checkpoint?). Fix: "
            f"pass it as --model_name_or_path to start from its weights, or --overwrite_output_dir to start afresh."
        )
    with open(state_path, encoding="utf-8") as handle:
        step = int(json.load(handle)["global_step"])
    weights = read_pytorch_weights(checkpoint, ModelArguments())
    load_pytorch_state_dict_in_tf2_model(trainer.seq2seq, weights, skip_logger_warnings=True)
    tf.train.Checkpoint(optimizer=trainer.optimizer).read(os.path.join(checkpoint, OPTIMIZER_PREFIX)).expect_partial()
    restored = int(trainer.optimizer.iterations.numpy())
    if restored != step:
        raise UserError(
            f"{checkpoint}: its optimizer is at step {restored}, its state file says {step}. Fix: "
            f"resume from another checkpoint, or pass --overwrite_output_dir to start afresh."
        )
    logger.info("Resuming from %s (step %d).", checkpoint, step)
    return step


# --------------------------------------------------------------------------- evaluation and prediction


def generate_and_score(model, tokenizer, dataset, args, generation: dict, scorer, prefix: str, output_dir=None):
    """Generate for every example (XLA-compiled generate, windows sorted by length), score against the
    references, and with `output_dir` write generated_predictions.txt in input order as it goes: the
    PyTorch recipes' windows and totals (seqtune.generation), with TensorFlow's generate."""
    generation = {key: value for key, value in generation.items() if value is not None}
    # XLA generate needs the decoder's cache, which TF's models follow config.use_cache for: models saved by the
    # Hugging Face Trainer script carry its training value there (use_cache: false).
    model.config.use_cache = True
    # XLA compiles generate once per input shape (seconds), then runs it ~100x faster than eagerly: every
    # batch is padded to GENERATION_BUCKET tokens and a full batch, so a whole evaluation compiles a few shapes.
    generate = tf.function(model.generate, jit_compile=True)
    losses = tf.function(lambda batch: _example_losses(model, batch), reduce_retracing=True)
    collate = collator(tokenizer, pad_to_max_length=False, multiple=GENERATION_BUCKET)
    batch_size = args.per_device_eval_batch_size

    def generate_window(subset, totals) -> list[str]:
        texts = []
        for start in range(0, len(subset), batch_size):
            chosen = list(range(start, min(start + batch_size, len(subset))))
            batch = collate(rows(subset, chosen + chosen[:1] * (batch_size - len(chosen))))  # a full batch
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            generated = generate(**inputs, **generation).numpy()[: len(chosen)]
            batch = {name: values[: len(chosen)] for name, values in batch.items()}
            if "labels" in batch:
                totals.losses.append(losses(batch).numpy())
            totals.batches += 1
            decoded = decode_token_ids(generated, tokenizer)
            references = decode_token_ids(batch["labels"], tokenizer) if "labels" in batch else decoded
            totals.scorer.add(decoded, references, generated, tokenizer.pad_token_id)
            texts.extend(decoded)
        return texts

    on_cpu = not tf.config.list_physical_devices("GPU")
    if output_dir is None:
        return evaluate_in_windows(dataset, generate_window, scorer, prefix, on_cpu)
    return predict_to_file(dataset, generate_window, output_dir, scorer, on_cpu)


def _example_losses(model, batch):
    """[batch, 2]: each example's summed target-token loss and its number of target tokens."""
    labels = batch["labels"]
    mask = tf.cast(tf.not_equal(labels, -100), tf.float32)
    logits = model(**batch, training=False).logits
    return tf.stack([token_loss_sums(logits, labels, mask), tf.reduce_sum(mask, axis=-1)], axis=-1)


if __name__ == "__main__":
    main()
