"""The model card (README.md) both training scripts write into the output dir, and that
`--push_to_hub` publishes: base model, data set, task, final metrics, hyper-parameters,
the training curve from the report, the source prefix, seqtune's version and the command
line (tokens redacted).

`recipes.common.wrap_up_run` gathers the facts for both recipes; `write_model_card` renders them.
The metadata block names the base model only when it is a hub id, so that a card written
from a local model folder still passes the hub's metadata validation.
"""

from __future__ import annotations

import os
import re
import shlex

import yaml

from . import __version__
from .outputs import atomic_write_text
from .runtime import is_main_process

CARD_NAME = "README.md"
TASK = "summarization"
_NOISE_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_id(name: str | None) -> str | None:
    """`name` when it names a hub repository (not a local folder or file), else None."""
    if not name or os.path.exists(os.path.expanduser(name)) or not _HUB_ID.match(name):
        return None
    return name


def final_metrics(results: dict) -> dict:
    """The metrics that describe the model (evaluation, prediction, training loss), not throughput."""
    return {
        key: value
        for key, value in results.items()
        if key.startswith(("eval_", "predict_", "train_loss"))
        and isinstance(value, (int, float))
        and not key.endswith(_NOISE_SUFFIXES)
    }


def _metric(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _setting(value) -> str:
    return str(getattr(value, "value", value))  # enums (scheduler, optimizer) by name


def _metadata(info: dict) -> str:
    metadata: dict = {"library_name": "transformers", "pipeline_tag": TASK, "tags": [TASK, "seqtune"]}
    if hub_id(info.get("base_model")):
        metadata["base_model"] = info["base_model"]
    return yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)


def _origin_text(info: dict) -> str:
    if info.get("from_scratch"):  # --config_name / --model_type without --model_name_or_path
        return f"A model trained from scratch ({info['from_scratch']}, random initial weights)"
    return f"A fine-tuned version of {_base_model_text(info.get('base_model'))}"


def _base_model_text(base: str | None) -> str:
    if not base:
        return "an unnamed base model"
    if hub_id(base):
        return f"[`{base}`](https://huggingface.co/{base})"
    return f"`{base}` (a local model folder)"


def render_model_card(output_dir: str, info: dict) -> str:
    """The card's text. `info`: base_model, dataset (name and configuration, or file names),
    metrics, hyperparameters, source_prefix, command (already redacted), trainer, and
    repo_id when the model is pushed."""
    from .report import TRAINING_LOSS_PLOT

    repo_id = info.get("repo_id")
    title = repo_id.split("/")[-1] if repo_id else os.path.basename(os.path.normpath(output_dir))
    metrics = final_metrics(info.get("metrics") or {})
    rows = [f"| {key} | {_metric(value)} |" for key, value in sorted(metrics.items())] or ["| (none) | |"]
    hyper = [
        f"- {key}: {_setting(value)}"
        for key, value in sorted((info.get("hyperparameters") or {}).items())
        if value is not None
    ]
    prefix = info.get("source_prefix")
    model_ref = repo_id or f"path/to/{title}"
    sections = [
        f"---\n{_metadata(info)}---\n",
        f"# {title}\n",
        f"{_origin_text(info)} for **{TASK}**, "
        f"trained with seqtune {__version__} ({info.get('trainer') or 'unknown loop'}).\n",
        f"## Data\n\nData set: {info.get('dataset') or '(not recorded)'}\n",
        "## Results\n\n| metric | value |\n|---|---|\n" + "\n".join(rows) + "\n",
    ]
    if os.path.isfile(os.path.join(output_dir, TRAINING_LOSS_PLOT)):
        sections.append(f"## Training curve\n\n![Training loss]({TRAINING_LOSS_PLOT})\n")
    prefix_note = f"Source prefix: `{prefix!r}`: put it before every input text." if prefix else "No source prefix."
    call = f"{prefix!r} + text" if prefix else "text"
    sections += [
        f"## Usage\n\n{prefix_note}\n\n```python\nfrom transformers import pipeline\n\n"
        f'summarizer = pipeline("{TASK}", model="{model_ref}")\n'
        f'print(summarizer({call})[0]["summary_text"])\n```\n\n'
        f"Or with seqtune, which applies the prefix itself: `seqtune summarize --model {model_ref} article.txt`.\n",
        "## Training hyper-parameters\n\n" + ("\n".join(hyper) or "- (defaults)") + "\n",
        f"## How it was trained\n\nseqtune {__version__}, command line:\n\n"
        f"```\n{shlex.join(info.get('command') or [])}\n```\n",
    ]
    return "\n".join(sections)


def write_model_card(output_dir: str, info: dict) -> None:
    """Write README.md into `output_dir` (main process only)."""
    if not is_main_process():
        return
    atomic_write_text(os.path.join(output_dir, CARD_NAME), render_model_card(output_dir, info))
