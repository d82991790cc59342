"""seqtune.card: which names are hub ids, which metrics a card shows, and the card's sections.

tests/test_hub.py already checks a card for a hub base model pushed to a repo (metadata with
base_model, metric rows, the plot, no source prefix); these cover the other cases.
"""

from __future__ import annotations

import ast
import enum
import os
import shlex

import pytest
import yaml

from seqtune.card import final_metrics, hub_id, render_model_card, write_model_card

PLOT = "plot_training_loss.png"


def metadata_of(card: str) -> dict:
    assert card.startswith("---\n")
    block, _ = card[len("---\n") :].split("\n---\n", 1)
    return yaml.safe_load(block)


def section(card: str, title: str) -> str:
    """The text of one `## title` section."""
    start = card.index(f"## {title}\n")
    end = card.find("\n## ", start + 1)
    return card[start : end if end != -1 else len(card)]


@pytest.mark.parametrize("name", ["google-t5/t5-small", "t5-small", "facebook/bart-large-cnn", "org_1/model.v2"])
def test_hub_id_accepts_hub_names(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # none of them exists here as a folder
    assert hub_id(name) == name


@pytest.mark.parametrize(
    "name",
    [
        None,
        "",
        "./model",
        "../runs/model",
        "/abs/path/model",
        "~/model",
        "a/b/c",
        "has space/model",
        "org/",
        "/model",
        "-model",
        "org/model!",
        "https://huggingface.co/org/model",
    ],
)
def test_hub_id_rejects_paths_and_junk(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub_id(name) is None


def test_hub_id_rejects_existing_local_folder_or_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").mkdir()
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "weights.bin").write_bytes(b"")
    assert hub_id("my-model") is None  # shaped like a hub id, but a folder here
    assert hub_id("org/weights.bin") is None
    assert hub_id("other-model") == "other-model"


def test_final_metrics_keeps_model_metrics_and_drops_throughput():
    results = {
        "eval_rouge1": 41.5,
        "eval_rougeLsum": 38.25,
        "eval_gen_len": 17.0,
        "eval_loss": 2.5,
        "eval_samples": 16,
        "predict_rouge2": 12.0,
        "predict_samples": 12,
        "train_loss": 1.25,
        "eval_runtime": 3.2,
        "eval_samples_per_second": 5.0,
        "eval_steps_per_second": 1.25,
        "predict_runtime": 1.0,
        "predict_samples_per_second": 12.0,
        "train_runtime": 60.0,
        "train_samples_per_second": 4.0,
        "train_steps_per_second": 1.0,
        "train_samples": 64,
        "epoch": 3.0,
        "total_flos": 12345,
        "step": 10,
        "eval_note": "not a number",
        "eval_per_rouge": [1.0, 2.0],
        "eval_missing": None,
    }
    assert final_metrics(results) == {
        "eval_rouge1": 41.5,
        "eval_rougeLsum": 38.25,
        "eval_gen_len": 17.0,
        "eval_loss": 2.5,
        "eval_samples": 16,
        "predict_rouge2": 12.0,
        "predict_samples": 12,
        "train_loss": 1.25,
    }
    assert final_metrics({}) == {}


def local_info(**changes) -> dict:
    info = {
        "base_model": None,
        "dataset": "train.jsonl, validation.jsonl",
        "trainer": "Trainer",
        "metrics": {"eval_rouge2": 12.0, "eval_rouge1": 41.5, "eval_samples": 16, "eval_runtime": 3.2},
        "hyperparameters": {},
        "source_prefix": "summarize: ",
        "command": ["run_summarization.py", "--model_name_or_path", "./my model"],
    }
    info.update(changes)
    return info


def test_metadata_is_valid_yaml_without_base_model_for_local_folder(tmp_path):
    base = tmp_path / "base-model"
    base.mkdir()
    card = render_model_card(str(tmp_path / "run"), local_info(base_model=str(base)))
    assert metadata_of(card) == {
        "library_name": "transformers",
        "pipeline_tag": "summarization",
        "tags": ["summarization", "seqtune"],
    }
    assert f"`{base}` (a local model folder)" in card
    assert "huggingface.co" not in card


def test_metadata_names_hub_base_model_and_links_it(tmp_path):
    card = render_model_card(str(tmp_path / "run"), local_info(base_model="facebook/bart-base"))
    assert metadata_of(card)["base_model"] == "facebook/bart-base"
    assert "[`facebook/bart-base`](https://huggingface.co/facebook/bart-base)" in card


def test_unnamed_base_model(tmp_path):
    card = render_model_card(str(tmp_path / "run"), local_info())
    assert "base_model" not in metadata_of(card)
    assert "A fine-tuned version of an unnamed base model for **summarization**" in card
    assert "(Trainer)" in card


def test_results_table_rows_sorted_and_formatted(tmp_path):
    card = render_model_card(str(tmp_path / "run"), local_info())
    results = section(card, "Results")
    assert results.splitlines()[2:] == [
        "| metric | value |",
        "|---|---|",
        "| eval_rouge1 | 41.5000 |",
        "| eval_rouge2 | 12.0000 |",
        "| eval_samples | 16 |",
    ]
    assert "eval_runtime" not in card


def test_results_table_without_metrics(tmp_path):
    card = render_model_card(str(tmp_path / "run"), local_info(metrics={"eval_runtime": 1.0}))
    assert "| (none) | |" in section(card, "Results")
    card = render_model_card(str(tmp_path / "run"), local_info(metrics=None))
    assert "| (none) | |" in section(card, "Results")


def test_source_prefix_note_and_usage_snippet(tmp_path):
    card = render_model_card(str(tmp_path / "my-run"), local_info())
    usage = section(card, "Usage")
    assert "Source prefix: `'summarize: '`: put it before every input text." in usage
    assert 'model = AutoModelForSeq2SeqLM.from_pretrained("path/to/my-run")' in usage  # no repo: the folder
    assert "inputs = tokenizer('summarize: ' + text, return_tensors=\"pt\", truncation=True)" in usage
    assert "`seqtune summarize --model path/to/my-run article.txt`" in usage
    assert "No source prefix." not in card
    assert "\n---\n\n# my-run\n" in card  # the title, right after the metadata: the folder's name


def test_usage_snippet_is_python_that_applies_the_prefix(tmp_path):
    prefix = 'it\'s: "quoted" '
    card = render_model_card(str(tmp_path / "run"), local_info(source_prefix=prefix))
    code = section(card, "Usage").split("```python\n", 1)[1].split("```", 1)[0]
    calls = [
        node
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "tokenizer"
    ]
    assert len(calls) == 1
    argument = calls[0].args[0]  # prefix + text, the prefix quoted as a Python literal whatever it holds
    assert isinstance(argument, ast.BinOp) and isinstance(argument.op, ast.Add)
    assert argument.left.value == prefix and argument.right.id == "text"


def test_usage_snippet_runs_with_this_transformers(tmp_path, t5_model, capsys):
    """The card once showed pipeline("summarization"), which transformers 5 no longer has."""
    card = render_model_card(str(tmp_path / "my-run"), local_info())
    code = section(card, "Usage").split("```python\n", 1)[1].split("```", 1)[0]
    exec(code.replace("path/to/my-run", t5_model), {"text": "the council of paris will open the old bridge ."})
    assert capsys.readouterr().out.endswith("\n")  # it ran to the print (the random model's text may be empty)


def test_training_curve_only_when_plot_file_exists(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    assert "## Training curve" not in render_model_card(str(out), local_info())
    (out / PLOT).mkdir()  # a folder of that name is not the plot
    assert "## Training curve" not in render_model_card(str(out), local_info())
    (out / PLOT).rmdir()
    (out / PLOT).write_bytes(b"\x89PNG\r\n\x1a\n")
    card = render_model_card(str(out), local_info())
    assert section(card, "Training curve") == f"## Training curve\n\n![Training loss]({PLOT})\n"
    assert card.index("## Results") < card.index("## Training curve") < card.index("## Usage")


def test_command_is_shell_quoted(tmp_path):
    command = [
        "run_summarization.py",
        "--model_name_or_path",
        "./my model",
        "--source_prefix",
        "summarize: ",
        "--output_dir",
        "/tmp/o'brien",
        "--hub_token",
        "<redacted>",
        "--do_train",
    ]
    card = render_model_card(str(tmp_path / "run"), local_info(command=command))
    trained = section(card, "How it was trained")
    line = trained.split("```\n", 1)[1].split("\n```", 1)[0]
    assert shlex.split(line) == command  # copy-pasted into a shell, it is the same command
    assert "'./my model'" in line and "'<redacted>'" in line


def test_empty_command_and_defaults(tmp_path):
    card = render_model_card(
        str(tmp_path / "run"), local_info(command=None, hyperparameters=None, dataset=None, trainer=None)
    )
    assert "```\n\n```" in section(card, "How it was trained")
    assert "- (defaults)" in section(card, "Training hyper-parameters")
    assert "Data set: (not recorded)" in card and "(unknown loop)" in card


def test_hyperparameters_sorted_with_enums_by_value(tmp_path):
    class Scheduler(enum.Enum):
        LINEAR = "linear"

    hyper = {"seed": 0, "lr_scheduler_type": Scheduler.LINEAR, "learning_rate": 0.001, "warmup_steps": None}
    card = render_model_card(str(tmp_path / "run"), local_info(hyperparameters=hyper))
    assert section(card, "Training hyper-parameters").splitlines()[2:] == [
        "- learning_rate: 0.001",
        "- lr_scheduler_type: linear",
        "- seed: 0",
    ]


def test_repo_id_sets_title_and_model_reference(tmp_path):
    card = render_model_card(str(tmp_path / "run"), local_info(repo_id="alice/news-t5"))
    assert "\n# news-t5\n" in card and "# run\n" not in card
    assert 'from_pretrained("alice/news-t5")' in card and "path/to/" not in card


def test_write_model_card_writes_readme(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    info = local_info(base_model="google-t5/t5-small")
    write_model_card(str(out), info)
    assert os.listdir(out) == ["README.md"]  # nothing else, no temporary file left behind
    assert (out / "README.md").read_text(encoding="utf-8") == render_model_card(str(out), info)


def test_write_model_card_replaces_an_existing_readme(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "README.md").write_text("old card")
    write_model_card(str(out), local_info())
    assert (out / "README.md").read_text(encoding="utf-8").startswith("---\nlibrary_name: transformers\n")


def test_write_model_card_only_on_main_process(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "run"
    out.mkdir()
    write_model_card(str(out), local_info())
    assert os.listdir(out) == []


def test_a_model_trained_from_scratch_says_so(tmp_path):
    card = render_model_card(str(tmp_path / "run"), {**local_info(), "from_scratch": "model type t5"})
    assert "A model trained from scratch (model type t5, random initial weights)" in card
    assert "fine-tuned version" not in card


def translation_info(**changes) -> dict:
    info = {
        "task": "translation",
        "languages": ["en", "ro"],
        "source_prefix": "translate English to Romanian: ",
        "metrics": {"eval_bleu": 27.5, "eval_chrf": 55.25, "eval_gen_len": 30.0},
        "command": ["run_translation.py", "--source_lang", "en", "--target_lang", "ro"],
    }
    return local_info(**{**info, **changes})


def test_translation_card_names_the_task_the_languages_and_the_translate_usage(tmp_path):
    card = render_model_card(str(tmp_path / "ro-run"), translation_info())
    assert metadata_of(card) == {
        "library_name": "transformers",
        "pipeline_tag": "translation",
        "tags": ["translation", "seqtune"],
        "language": ["en", "ro"],
    }
    assert "A fine-tuned version of an unnamed base model for **translation** from en to ro, trained with" in card
    usage = section(card, "Usage")
    code = usage.split("```python\n", 1)[1].split("```", 1)[0]
    compile(code, "usage", "exec")  # Python
    assert "tokenizer('translate English to Romanian: ' + text, return_tensors" in code
    assert "applies the prefix and the languages itself: `seqtune translate --model path/to/ro-run --lines" in usage
    assert "| eval_bleu | 27.5000 |" in section(card, "Results")
    assert "summar" not in card.lower()  # nothing of the summarization card is left


def test_translation_card_with_multilingual_codes_and_a_hub_repo(tmp_path):
    card = render_model_card(
        str(tmp_path / "run"), translation_info(languages=["en_XX", "ro_RO"], repo_id="alice/mbart-en-ro")
    )
    assert metadata_of(card)["language"] == ["en", "ro"]  # the hub's ISO codes
    assert "for **translation** from en_XX to ro_RO" in card
    assert "`seqtune translate --model alice/mbart-en-ro --lines sentences.txt`" in card


def test_summarization_card_is_unchanged_by_the_task_fields(tmp_path):
    plain = render_model_card(str(tmp_path / "run"), local_info())
    assert render_model_card(str(tmp_path / "run"), local_info(task="summarization", languages=None)) == plain
    assert "language" not in metadata_of(plain) and "`seqtune summarize --model path/to/run article.txt`" in plain
