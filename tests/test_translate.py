"""`seqtune translate`: the generation command of `seqtune summarize` on the translation task.

A model trained by run_translation.py carries its prefix and languages; `seqtune translate`
applies them to plain text and to table inputs (nested `translation` or flat language columns),
and a model of one task used with the other task's command is refused with the right command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, run_script

from seqtune.arguments import DataArguments, TranslationDataArguments
from seqtune.demo import PAIR_PREFIX, make_base_model, make_pair_files, pseudish_vocabulary
from seqtune.modeling import remember_task_settings
from seqtune.summarize import main, translate

TRANSLATION_SCRIPT = os.path.join(REPO, "examples", "pytorch", "translation", "run_translation.py")
SENTENCES = [
    "on monday the bank of oslo will close the old park .",
    "critics praised the design in a letter .",
    "on friday the museum of rome will open the old tower .",
]


@pytest.fixture(scope="module")
def pair_model(tmp_path_factory) -> str:
    """A random tiny T5 whose tokenizer knows the demo's made-up target language."""
    return make_base_model(str(tmp_path_factory.mktemp("models") / "pair-t5"), extra_words=pseudish_vocabulary())


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> dict:
    return make_pair_files(str(tmp_path_factory.mktemp("pair")), train=32, validation=8, test=6)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, pair_model, pair_files):
    """The output dir of a real (two-step) run of the translation script on nested en-ps data."""
    out = tmp_path_factory.mktemp("translate") / "run"
    result = run_script(
        TRANSLATION_SCRIPT,
        [
            "--model_name_or_path",
            pair_model,
            "--train_file",
            pair_files["train"],
            "--validation_file",
            pair_files["validation"],
            "--source_lang",
            "en",
            "--target_lang",
            "ps",
            "--source_prefix",
            PAIR_PREFIX,
            "--output_dir",
            str(out),
            "--max_source_length",
            "40",
            "--max_target_length",
            "20",
            "--per_device_train_batch_size",
            "8",
            "--do_train",
            "--max_steps",
            "2",
            "--report_to",
            "none",
            "--seed",
            "0",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def store_settings(tmp_path_factory, base: str, name: str, data_args, model=None) -> str:
    """`base` (or `model` with base's tokenizer) with special tokens suppressed in generation (every output
    is words), its settings stored by the core function the scripts call."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("translate") / name
    model = model or AutoModelForSeq2SeqLM.from_pretrained(base)
    model.generation_config.suppress_tokens = [0, 1, 2, 3]
    remember_task_settings(model, data_args)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def translating_model(tmp_path_factory, pair_model) -> str:
    """A tiny T5 with larger random weights, so that its outputs depend on the input (and the prefix)."""
    import torch
    from transformers import AutoConfig, T5Config, T5ForConditionalGeneration

    config = AutoConfig.from_pretrained(pair_model).to_dict()
    config.update(initializer_factor=3.0)
    torch.manual_seed(0)
    return store_settings(
        tmp_path_factory,
        pair_model,
        "translator",
        TranslationDataArguments(
            source_prefix=PAIR_PREFIX, source_lang="en", target_lang="ps", max_source_length=40, max_target_length=6
        ),
        model=T5ForConditionalGeneration(T5Config(**config)),
    )


def one_by_one(model_dir: str, texts: list[str], prefix: str) -> list[str]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    outputs = []
    for text in texts:
        generated = model.generate(**tokenizer(prefix + text, return_tensors="pt"), max_length=6)
        outputs.append(" ".join(tokenizer.decode(generated[0], skip_special_tokens=True).split()))
    return outputs


def run(command, *argv) -> int:
    try:
        return command([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_a_trained_model_translates_text_and_nested_jsonl_from_the_cli(trained_dir, pair_files, tmp_path):
    settings = json.loads((trained_dir / "config.json").read_text())["task_specific_params"]["translation"]
    assert settings["prefix"] == PAIR_PREFIX and (settings["source_lang"], settings["target_lang"]) == ("en", "ps")
    (tmp_path / "sentences.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "seqtune.cli", "translate", "--model", str(trained_dir), "--output", str(out)]
        + ["--lines", str(tmp_path / "sentences.txt"), pair_files["test"]],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, SEQTUNE_PROGRESS=""),
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(out)
    assert [row["id"] for row in rows] == [f"{tmp_path / 'sentences.txt'}:{n}" for n in (1, 2, 3)] + [
        f"{pair_files['test']}:{n}" for n in range(1, 7)
    ]
    assert all(set(row) == {"id", "translation"} and isinstance(row["translation"], str) for row in rows)
    assert f"Translating with {trained_dir} from en to ps: prefix {PAIR_PREFIX!r}" in result.stderr
    assert "inputs up to 40 tokens" in result.stderr and "'max_length': 20" in result.stderr
    assert "Translating: 9/9 texts (100%)" in result.stderr and f"Wrote 9 translations to {out}" in result.stderr
    # The run's model card (seqtune.card via the recipes' wrap_up_run) is a translation card.
    card = (trained_dir / "README.md").read_text(encoding="utf-8")
    assert "pipeline_tag: translation" in card and "for **translation** from en to ps" in card
    assert "model.generate(**inputs)" in card and f"seqtune translate --model path/to/{trained_dir.name}" in card


def test_source_column_of_nested_and_flat_tables_in_input_order(translating_model, tmp_path, capsys):
    nested = tmp_path / "nested.jsonl"
    nested.write_text(
        "".join(json.dumps({"translation": {"ps": "x", "en": text}}) + "\n" for text in SENTENCES), encoding="utf-8"
    )
    flat = tmp_path / "flat.jsonl"
    flat.write_text("".join(json.dumps({"ps": "x", "en": text}) + "\n" for text in SENTENCES), encoding="utf-8")
    assert run(translate, "--model", translating_model, "--batch_size", 2, nested, flat) == 6
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = one_by_one(translating_model, SENTENCES, PAIR_PREFIX)
    assert [row["translation"] for row in rows] == expected * 2  # the en column, in order, the prefix applied
    assert len(set(expected)) == 3 and expected != one_by_one(translating_model, SENTENCES, "")

    # --source_lang picks the other column; --source_column names one.
    assert run(translate, "--model", translating_model, "--source_lang", "ps", "--format", "text", flat) == 3
    assert capsys.readouterr().out.splitlines() == one_by_one(translating_model, ["x"] * 3, PAIR_PREFIX)
    assert run(translate, "--model", translating_model, "--source_column", "nope", flat) == 2
    assert "--source_column 'nope' is not a column" in capsys.readouterr().err


def test_a_model_of_the_other_task_is_refused_with_the_right_command(translating_model, t5_model, tmp_path_factory):
    summarizer = store_settings(
        tmp_path_factory, t5_model, "summarizer", DataArguments(source_prefix="summarize: ", max_target_length=6)
    )
    text = tmp_path_factory.mktemp("inputs") / "text.txt"
    text.write_text(SENTENCES[0], encoding="utf-8")

    def refused(command, model) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "seqtune.cli", command, "--model", model, str(text)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert "Summarizing:" not in result.stderr and "Translating:" not in result.stderr  # before any input
        return result.stderr

    err = refused("summarize", translating_model)
    assert f"--model {translating_model} was fine-tuned for translation from en to ps, not summarization" in err
    assert f"Fix: use `seqtune translate --model {translating_model} ...`" in err
    err = refused("translate", summarizer)
    assert "was fine-tuned for summarization, not translation" in err and "`seqtune summarize --model" in err
    # --source_prefix: the user says how to prompt it, so it runs (with the model's own generation defaults).
    assert run(main, "--model", translating_model, "--source_prefix", "", "--format", "text", text) == 1


def test_hub_style_language_pair_settings_and_multilingual_tokenizers(
    pair_model, tmp_path, capsys, caplog, monkeypatch
):
    """A hub model's translation_en_to_de settings (as google-t5/t5-small has them) are picked by the
    languages; a multilingual tokenizer gets its source and target language set, unknown codes refused."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import seqtune.summarize as summarize_module

    folder = tmp_path / "hub-like"
    model = AutoModelForSeq2SeqLM.from_pretrained(pair_model)
    model.config.task_specific_params = {
        "summarization": {"prefix": "summarize: ", "max_length": 200, "num_beams": 4},
        "translation_en_to_de": {"prefix": "translate English to German: ", "max_length": 5},
    }
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(pair_model).save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text(SENTENCES[1], encoding="utf-8")

    assert run(translate, "--model", folder, "--source_lang", "en", "--target_lang", "de", text) == 1
    assert "prefix 'translate English to German: '" in caplog.text and "'max_length': 5" in caplog.text
    caplog.clear()
    assert run(translate, "--model", folder, text) == 1  # not refused: the settings are the hub's, not seqtune's
    assert "pass --source_lang and --target_lang to use one" in caplog.text and "prefix ''" in caplog.text

    loaded = {}
    real = summarize_module.load_seq2seq

    def multilingual(model_args):
        tokenizer, model = real(model_args)
        tokenizer.src_lang = tokenizer.tgt_lang = None  # as mBART's: the language codes are tokens
        loaded["tokenizer"] = tokenizer
        return tokenizer, model

    monkeypatch.setattr(summarize_module, "load_seq2seq", multilingual)
    assert run(translate, "--model", folder, "--source_lang", "oslo", "--target_lang", "paris", text) == 1
    assert (loaded["tokenizer"].src_lang, loaded["tokenizer"].tgt_lang) == ("oslo", "paris")
    capsys.readouterr()
    assert run(translate, "--model", folder, "--source_lang", "oslo", "--target_lang", "xx_YY", text) == 2
    assert "--target_lang 'xx_YY' is not a language of the" in capsys.readouterr().err


def test_translate_help_speaks_of_translations():
    result = subprocess.run(
        [sys.executable, "-m", "seqtune.cli", "translate", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, COLUMNS="400"),
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: seqtune translate"), result.stderr
    text = " ".join(result.stdout.split())
    for words in ("--source_column", "--source_lang", "--target_lang", '{"id": ..., "translation": ...}'):
        assert words in text, words
    assert "--text_column" not in text and "summar" not in text
