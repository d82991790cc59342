"""The model card (README.md) both training scripts write into the output dir, and that
`--push_to_hub` publishes: base model, data set, task (and a translation's languages), final metrics, hyper-parameters,
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
TASK = "summarization"  # the task of a card whose facts name none
# Per task: the `seqtune` command that uses the model and an example input.
USAGE = {
    "summarization": ("summarize", "article.txt"),
    "translation": ("translate", "--lines sentences.txt"),
}
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


def _task(info: dict) -> str:
    return info.get("task") if info.get("task") in USAGE else TASK


def _languages(info: dict) -> list[str]:
    """A translation's (source, target) languages as given (en, or en_XX for mBART), those known."""
    return [language for language in info.get("languages") or () if language] if _task(info) != TASK else []


def _metadata(info: dict) -> str:
    task = _task(info)
    metadata: dict = {"library_name": "transformers", "pipeline_tag": task, "tags": [task, "seqtune"]}
    languages = list(dict.fromkeys(language.split("_")[0] for language in _languages(info)))
    if languages:  # the hub's language metadata: ISO codes (en_XX and eng_Latn are en and eng)
        metadata["language"] = languages
    if hub_id(info.get("base_model")):
        metadata["base_model"] = info["base_model"]
    if info.get("adapter"):  # a LoRA run (seqtune.adapters): the repository holds a PEFT adapter
        metadata["library_name"] = "peft"
        metadata["tags"] += ["lora", "peft"]
    return yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)


def _origin_text(info: dict) -> str:
    if info.get("from_scratch"):  # --config_name / --model_type without --model_name_or_path
        return f"A model trained from scratch ({info['from_scratch']}, random initial weights)"
    if info.get("adapter"):
        return f"A LoRA adapter (PEFT) for {_base_model_text(info.get('base_model'))}"
    return f"A fine-tuned version of {_base_model_text(info.get('base_model'))}"


def _base_model_text(base: str | None) -> str:
    if not base:
        return "an unnamed base model"
    if hub_id(base):
        return f"[`{base}`](https://huggingface.co/{base})"
    return f"`{base}` (a local model folder)"


def _adapter_section(adapter: dict, base: str | None, model_ref: str) -> str:
    """What the adapter is and how to load it (`seqtune.adapters.adapter_summary` gives `adapter`)."""
    modules = adapter.get("target_modules")
    modules = modules if isinstance(modules, str) else ", ".join(modules or [])
    share = 100.0 * adapter["trainable_parameters"] / max(adapter["total_parameters"], 1)
    return (
        f"## LoRA adapter\n\nBase model: {_base_model_text(base)}. LoRA r={adapter['r']}, "
        f"alpha={_setting(adapter['lora_alpha'])}, dropout={_setting(adapter['lora_dropout'])} on {modules}: "
        f"{adapter['trainable_parameters']:,} trained parameters of {adapter['total_parameters']:,} "
        f"({share:.2f}%).\n\n```python\nfrom peft import PeftModel\n"
        f"from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n\n"
        f'base = AutoModelForSeq2SeqLM.from_pretrained("{base or "BASE_MODEL"}")\n'
        f'model = PeftModel.from_pretrained(base, "{model_ref}").merge_and_unload()\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{model_ref}")\n```\n'
    )


def render_model_card(output_dir: str, info: dict) -> str:
    """The card's text. `info`: base_model, dataset (name and configuration, or file names),
    metrics, hyperparameters, source_prefix, command (already redacted), trainer, task (a
    `seqtune.tasks` name; summarization when absent), languages ((source, target) for
    translation), and repo_id when the model is pushed."""
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
    task = _task(info)
    languages = _languages(info)
    pair = f" from {languages[0]} to {languages[1]}" if len(languages) == 2 else ""
    sections = [
        f"---\n{_metadata(info)}---\n",
        f"# {title}\n",
        f"{_origin_text(info)} for **{task}**{pair}, "
        f"trained with seqtune {__version__} ({info.get('trainer') or 'unknown loop'}).\n",
        f"## Data\n\nData set: {info.get('dataset') or '(not recorded)'}\n",
        "## Results\n\n| metric | value |\n|---|---|\n" + "\n".join(rows) + "\n",
    ]
    if info.get("adapter"):
        sections.append(_adapter_section(info["adapter"], info.get("base_model"), model_ref))
    if os.path.isfile(os.path.join(output_dir, TRAINING_LOSS_PLOT)):
        sections.append(f"## Training curve\n\n![Training loss]({TRAINING_LOSS_PLOT})\n")
    prefix_note = f"Source prefix: `{prefix!r}`: put it before every input text." if prefix else "No source prefix."
    call = f"{prefix!r} + text" if prefix else "text"
    command, example = USAGE[task]
    applies = "the prefix and the languages" if languages else "the prefix"
    sections += [
        # generate(), not pipeline(): transformers 5 has no summarization or translation pipeline.
        f"## Usage\n\n{prefix_note}\n\n```python\nfrom transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{model_ref}")\n'
        f'model = AutoModelForSeq2SeqLM.from_pretrained("{model_ref}")\n'
        f'inputs = tokenizer({call}, return_tensors="pt", truncation=True)\n'
        f"print(tokenizer.decode(model.generate(**inputs)[0], skip_special_tokens=True))\n```\n\n"
        f"Or with seqtune, which applies {applies} itself: `seqtune {command} --model {model_ref} {example}`.\n",
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
