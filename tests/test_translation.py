"""The translation task (issue 24) on the shared core: its flags, data shapes, metric and languages.

The scripts themselves run in test_hf_example_tests.py (transformers' own translation tests);
here: sacreBLEU scores offline, nested and flat data, the messages for wrong languages and
columns, multilingual tokenizers (mBART, mBART-50, NLLB built tiny from vocabularies), and a
short mBART-50 run whose saved model carries its languages and forced first token.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import sacrebleu
from conftest import REPO

from seqtune.arguments import DataArguments, ModelArguments, TranslationDataArguments
from seqtune.data import load_raw_data
from seqtune.errors import UserError
from seqtune.metrics import TranslationScorer
from seqtune.modeling import apply_language_settings, task_settings
from seqtune.tasks import SUMMARIZATION, TRANSLATION, task_of

WMT16 = os.path.join(REPO, "tests", "fixtures", "tests_samples", "wmt16", "sample.json")


# --------------------------------------------------------------------------- metric


def test_bleu_and_chrf_are_sacrebleus_corpus_scores():
    predictions = ["the cat sat on the mat", "a dog ran in the park today", "hello"]
    references = ["the cat sat on the mat", "a dog ran through the park", "hello world"]
    scorer = TranslationScorer()
    scorer.add(predictions[:2], references[:2])
    scorer.add(predictions[2:], references[2:])  # batch by batch: the same corpus score
    scores = scorer.result()
    assert scores["bleu"] == round(sacrebleu.corpus_bleu(predictions, [references]).score, 4)
    assert scores["chrf"] == round(sacrebleu.corpus_chrf(predictions, [references]).score, 4)
    assert 0 < scores["bleu"] < 100 and set(scores) == {"bleu", "chrf", "gen_len"}
    assert "hello" not in repr(vars(scorer))  # statistics added up, no sentence kept (flat memory)
    perfect = TranslationScorer()
    perfect.add(references, references)
    assert perfect.scores() == {"bleu": 100.0, "chrf": 100.0}
    assert TranslationScorer().scores() == {"bleu": 0.0, "chrf": 0.0}


def test_the_task_is_found_from_the_data_flags():
    assert task_of(TranslationDataArguments()) is TRANSLATION and task_of(DataArguments()) is SUMMARIZATION
    assert TRANSLATION.scorer is TranslationScorer and TRANSLATION.trainer_script == "run_translation.py"


# --------------------------------------------------------------------------- data


def load(files: dict, **flags):
    args = TranslationDataArguments(**{f"{split}_file": path for split, path in files.items()}, **flags)
    return load_raw_data(args, ModelArguments(), list(files))


def test_nested_translations_become_the_source_and_target_columns():
    raw = load({"train": WMT16}, source_lang="en_XX", target_lang="ro_RO")  # en_XX's key is en
    assert (raw.text_column, raw.summary_column) == ("translation.en", "translation.ro")
    first = json.loads(open(WMT16, encoding="utf-8").readline())["translation"]
    assert raw.splits["train"][0][raw.text_column] == first["en"]
    assert raw.splits["train"][0][raw.summary_column] == first["ro"]
    reverse = load({"train": WMT16}, source_lang="ro", target_lang="en")
    assert (reverse.text_column, reverse.summary_column) == ("translation.ro", "translation.en")


@pytest.mark.parametrize(
    "flags,message",
    [
        ({}, "which is the source and which the target? Fix: pass --source_lang and --target_lang"),
        ({"source_lang": "de", "target_lang": "ro"}, "--source_lang de: the column 'translation' of"),
        ({"source_lang": "en", "target_lang": "fr"}, "has no 'fr' texts; its languages are en, ro"),
    ],
)
def test_nested_data_with_missing_or_wrong_languages_says_which_are_there(flags, message):
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        load({"train": WMT16}, **flags)
    assert WMT16 in str(caught.value)


def test_flat_files_use_columns_named_after_the_languages_or_the_column_flags(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("id,de,en\n1,Hallo Welt,hello world\n2,gute Nacht,good night\n", encoding="utf-8")
    raw = load({"train": str(path)}, source_lang="en", target_lang="de")
    assert (raw.text_column, raw.summary_column) == ("en", "de")
    raw = load({"train": str(path)}, source_column="de", target_column="en")
    assert (raw.text_column, raw.summary_column) == ("de", "en")
    with pytest.raises(UserError, match=r"--target_column 'fr' is not a column of .*pairs.csv; its columns are"):
        load({"train": str(path)}, source_column="en", target_column="fr")


def test_the_summarization_column_flags_work_and_cannot_contradict(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"a": "hello", "b": "hallo"}\n', encoding="utf-8")
    raw = load({"train": str(path)}, text_column="b", summary_column="a")
    assert (raw.text_column, raw.summary_column) == ("b", "a")
    with pytest.raises(UserError, match="--source_column 'a' and --text_column 'b' name the same column"):
        TranslationDataArguments(source_column="a", text_column="b")
    with pytest.raises(UserError, match="--lang is for summarization"):
        TranslationDataArguments(lang="en_XX")


def test_rows_without_a_translation_are_dropped_and_messages_say_source_and_target(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"translation": {"en": "hi", "ro": ""}}, {"translation": {"en": "bye", "ro": "pa"}}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    raw = load({"train": str(path)}, source_lang="en", target_lang="ro")
    assert raw.splits["train"]["translation.ro"] == ["pa"]
    path.write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"no usable rows.*--source_column/--target_column"):
        load({"train": str(path)}, source_lang="en", target_lang="ro")


def test_a_missing_split_names_the_translation_scripts(tmp_path):
    with pytest.raises(UserError, match=r"run_translation\.py evaluates with --do_eval"):
        load_raw_data(
            TranslationDataArguments(train_file=WMT16, source_lang="en", target_lang="ro"),
            ModelArguments(),
            ["train", "validation"],
        )


# --------------------------------------------------------------------------- multilingual tokenizers

WORDS = "the cat sat on mat a dog ran hello world pisica sta pe covor".split()


def unigram_vocabulary():
    return [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in WORDS]


def tiny_tokenizer(kind: str):
    from transformers import MBart50Tokenizer, MBartTokenizer, NllbTokenizer

    if kind == "nllb":
        vocabulary = {token: index for index, (token, _) in enumerate(unigram_vocabulary())}
        return NllbTokenizer(vocab=vocabulary, merges=[])
    return {"mbart": MBartTokenizer, "mbart50": MBart50Tokenizer}[kind](vocab=unigram_vocabulary())


def tiny_mbart(tokenizer):
    import torch
    from transformers import MBartConfig, MBartForConditionalGeneration

    torch.manual_seed(0)
    config = MBartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        decoder_start_token_id=None,
    )
    return MBartForConditionalGeneration(config)


CODES = {"mbart": ("en_XX", "ro_RO"), "mbart50": ("en_XX", "ro_RO"), "nllb": ("eng_Latn", "ron_Latn")}


@pytest.mark.parametrize("kind", sorted(CODES))
def test_multilingual_tokenizers_get_their_languages(kind):
    tokenizer = tiny_tokenizer(kind)
    model = tiny_mbart(tokenizer)
    source, target = CODES[kind]
    apply_language_settings(tokenizer, model, TranslationDataArguments(source_lang=source, target_lang=target))
    encoded = tokenizer("the cat", text_target="pisica")
    source_id, target_id = tokenizer.convert_tokens_to_ids([source, target])
    assert source_id in encoded["input_ids"] and target_id in encoded["labels"]
    if kind == "mbart":  # the decoder starts from the target language, as the Hugging Face script sets it
        assert model.config.decoder_start_token_id == target_id
        assert model.generation_config.forced_bos_token_id is None
    else:  # mBART-50 and NLLB start their output with the target language: forced by default
        assert model.generation_config.forced_bos_token_id == target_id


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"source_lang": "english", "target_lang": "ro_RO"}, "--source_lang 'english' is not a language of the"),
        ({"source_lang": "en_XX", "target_lang": "xx_YY"}, "--target_lang 'xx_YY' is not a language of the"),
        ({"source_lang": "en_XX"}, "is a multilingual tokenizer: it needs --source_lang and --target_lang"),
        (
            {"source_lang": "en_XX", "target_lang": "ro_RO", "forced_bos_token": "de"},
            "--forced_bos_token 'de' is not in the tokenizer's vocabulary",
        ),
    ],
)
def test_unknown_language_codes_are_refused_by_flag(flags, message):
    tokenizer = tiny_tokenizer("mbart50")
    with pytest.raises(UserError, match=message):
        apply_language_settings(tokenizer, tiny_mbart(tokenizer), TranslationDataArguments(**flags))


def test_plain_tokenizers_take_the_languages_as_data_keys_only(t5_model):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(t5_model)
    model = T5ForConditionalGeneration.from_pretrained(t5_model)
    apply_language_settings(tokenizer, model, TranslationDataArguments(source_lang="en_XX", target_lang="ro_RO"))
    assert model.generation_config.forced_bos_token_id is None


# --------------------------------------------------------------------------- a run with mBART-50


def test_an_mbart50_run_saves_its_languages_and_forced_first_token(tmp_path, isolated_hf_home):
    from transformers import AutoConfig, GenerationConfig

    from seqtune.recipes.accelerate_loop import main as train_loop

    tokenizer = tiny_tokenizer("mbart50")
    model_dir = tmp_path / "tiny-mbart50"
    tiny_mbart(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "pairs.jsonl"
    pairs = [("the cat sat on the mat", "pisica sta pe covor"), ("hello world", "hello world")] * 4
    data.write_text("".join(json.dumps({"translation": {"en": s, "ro": t}}) + "\n" for s, t in pairs))
    out = tmp_path / "out"
    results = train_loop(
        [
            "--model_name_or_path", str(model_dir),
            "--train_file", str(data),
            "--validation_file", str(data),
            "--source_lang", "en_XX",
            "--target_lang", "ro_RO",
            "--output_dir", str(out),
            "--max_train_steps", "2",
            "--per_device_train_batch_size", "4",
            "--val_max_target_length", "8",
            "--max_source_length", "64",
        ],
        task=TRANSLATION,
    )  # fmt: skip
    assert {"eval_bleu", "eval_chrf", "eval_gen_len"} <= set(results)
    target_id = tokenizer.convert_tokens_to_ids("ro_RO")
    assert GenerationConfig.from_pretrained(out).forced_bos_token_id == target_id
    settings = task_settings(AutoConfig.from_pretrained(out), "translation")
    assert settings["source_lang"] == "en_XX" and settings["target_lang"] == "ro_RO"
    assert (out / "plot_eval_bleu.png").exists() and not (out / "plot_eval_rouge.png").exists()


# --------------------------------------------------------------------------- torchrun


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_processes_translate_and_score_like_one(t5_model, tmp_path):
    """run_translation_no_trainer.py under torchrun: every example scored once (BLEU is a corpus score,
    so the processes' sentences must be gathered, not their scores averaged), predictions in input order."""
    from conftest import run_script, torchrun

    script = os.path.join(REPO, "examples", "pytorch", "translation", "run_translation_no_trainer.py")

    def run(output_dir, per_device_batch, launcher=None):
        args = [
            "--model_name_or_path", t5_model,
            "--train_file", WMT16,
            "--validation_file", WMT16,
            "--test_file", WMT16,
            "--source_lang", "en",
            "--target_lang", "ro",
            "--source_prefix", "translate English to Romanian: ",
            "--output_dir", str(output_dir),
            "--max_train_steps", "2",
            "--per_device_train_batch_size", str(per_device_batch),
            "--per_device_eval_batch_size", "3",
            "--learning_rate", "1e-3",
            "--val_max_target_length", "12",
            "--do_predict",
            "--seed", "0",
        ]  # fmt: skip
        result = run_script(script, args, launcher=launcher)
        assert result.returncode == 0, result.stderr[-4000:]
        with open(output_dir / "all_results.json", encoding="utf-8") as handle:
            return json.load(handle)

    one = run(tmp_path / "one", 4)
    two = run(tmp_path / "two", 2, launcher=torchrun(2))
    assert two["eval_samples"] == one["eval_samples"] == 10 and two["predict_samples"] == 10
    for key in ("eval_bleu", "eval_chrf", "eval_gen_len", "predict_bleu"):
        assert two[key] == pytest.approx(one[key], abs=1e-3), key
    # The weights after two steps differ by float noise (T5 pads each process's half-batch to its own
    # length): the loss shows it in the 4th digit, the generated text not at all.
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=5e-3)
    predictions = (tmp_path / "two" / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()
    assert predictions == (tmp_path / "one" / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------- flags

# The Hugging Face translation scripts' own flags besides the summarization ones (run_translation.py's
# DataTrainingArguments; run_translation_no_trainer.py's argparse list adds --predict_with_generate).
HF_TRANSLATION_FLAGS = ["--source_lang", "--target_lang", "--forced_bos_token", "--source_prefix", "--num_beams"]


@pytest.mark.parametrize(
    "script,summarization",
    [
        ("run_translation.py", "run_summarization.py"),
        ("run_translation_no_trainer.py", "run_summarization_no_trainer.py"),
    ],
)
def test_translation_scripts_take_every_summarization_flag_and_their_own(script, summarization):
    from conftest import run_script

    path = os.path.join(REPO, "examples", "pytorch", "translation", script)
    result = run_script(path, ["-h"], env={"COLUMNS": "200"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script}")
    listed = set(re.findall(r"--[A-Za-z0-9_]+", result.stdout))
    with open(os.path.join(REPO, "tests", "data", "flags.json"), encoding="utf-8") as handle:
        summarization_flags = set(json.load(handle)[summarization])
    own = {"--source_column", "--target_column", *HF_TRANSLATION_FLAGS}
    if script.endswith("no_trainer.py"):
        own.add("--predict_with_generate")
    assert not (summarization_flags | own) - listed, sorted((summarization_flags | own) - listed)
