"""LoRA adapters (--use_peft / --lora_r, seqtune.adapters) in real training runs on the tiny models.

What is proven here: both scripts train LoRA adapters and end with a folder PEFT loads; --merge_adapter's
full model generates exactly what the adapter model generates; a checkpoint holds the adapter and the
optimizer state of its parameters only; runs killed at random moments resume from the newest complete
checkpoint and (Accelerate loop) end with the adapter of an uninterrupted run; 2 torchrun processes train
like one; `seqtune summarize` loads an adapter folder offline; the final push carries the adapter and a card
naming the base model; wrong flags end in one UserError.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import LOOP_SCRIPT, REPO, TRAINER_SCRIPT, quick_args, run_script, torchrun

from seqtune.adapters import DEFAULT_TARGET_MODULES, apply_lora, check_same_model, target_modules
from seqtune.arguments import DataArguments, LoopArguments, ModelArguments, TrainerArguments, parse_arguments
from seqtune.errors import UserError

peft = pytest.importorskip("peft")

_spec = importlib.util.spec_from_file_location("torture", os.path.join(REPO, "scripts", "torture.py"))
torture = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("torture", torture)
_spec.loader.exec_module(torture)

LORA = ["--lora_r", "4"]
STEPS = 4


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"


def folder_bytes(folder) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def load_t5(path):
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(path).eval()


def generate(model, tokenizer, texts: list[str]) -> list[list[int]]:
    """Greedy ids with the special tokens suppressed: every summary is 10 real tokens, input-dependent."""
    encoded = tokenizer(["summarize: " + text for text in texts], return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = model.generate(**encoded, max_length=10, num_beams=1, do_sample=False, suppress_tokens=[0, 1, 2, 3])
    return ids.tolist()


def validation_texts(files, count=8) -> list[str]:
    with open(files["validation"], encoding="utf-8") as handle:
        return [json.loads(line)["document"] for line in handle][:count]


# --------------------------------------------------------------------------- flags (no training)


def test_lora_flags_imply_use_peft_with_defaults_and_refuse_contradictions():
    model, _, _ = parse_arguments(
        (ModelArguments, DataArguments, TrainerArguments),
        ["--model_name_or_path", "m", "--output_dir", "/tmp/x", "--lora_r", "4", "--lora_target_modules", "q,v", "k"],
    )
    assert model.use_peft and model.lora_r == 4 and model.lora_alpha == 8 and model.lora_dropout == 0.05
    assert model.lora_target_modules == ["q", "v", "k"]
    model, _, _ = parse_arguments(
        (ModelArguments, DataArguments, LoopArguments), ["--model_name_or_path", "m", "--output_dir", "x", "--use_peft"]
    )
    assert model.lora_r == 8 and model.lora_alpha == 16
    bad = {
        ("--merge_adapter",): "--merge_adapter is a LoRA setting, but LoRA is off",
        ("--lora_alpha", "4"): "--lora_alpha is a LoRA setting",
        ("--lora_r", "0"): "--lora_r must be at least 1",
        ("--use_peft", "--lora_dropout", "1"): "--lora_dropout must be from 0 to below 1",
        ("--use_peft", "--lora_alpha", "nan"): "--lora_alpha must be a positive number",
    }
    for flags, message in bad.items():
        with pytest.raises(UserError, match=message):
            parse_arguments(
                (ModelArguments, DataArguments, LoopArguments),
                ["--model_name_or_path", "m", "--output_dir", "x", *flags],
            )
    with pytest.raises(UserError, match="--use_peft adapts a pre-trained model"):
        ModelArguments(model_type="t5", tokenizer_name="t", use_peft=True)


def _tiny(model_type: str):
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    common = {"vocab_size": 64, "d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 16, "d_kv": 8}
    if model_type not in ("t5", "mt5", "umt5", "longt5"):
        common = {
            "vocab_size": 64,
            "d_model": 16,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 16,
            "decoder_ffn_dim": 16,
            "max_position_embeddings": 32,
            "pad_token_id": 1,
            "decoder_start_token_id": 2,
        }
    return AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(model_type, **common))


@pytest.mark.parametrize(
    "model_type",
    ["t5", "mt5", "umt5", "longt5", "bart", "mbart", "pegasus", "marian", "blenderbot", "plbart", "m2m_100"],
)
def test_default_target_modules_per_model_type_wrap_the_attention(model_type):
    model = _tiny(model_type)
    targets = target_modules(model, None)
    assert targets == DEFAULT_TARGET_MODULES[model_type]
    wrapped = apply_lora(model, ModelArguments(model_name_or_path="base", use_peft=True))
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable} == set(targets)


def test_a_target_that_matches_no_layer_is_one_user_error_naming_the_models_layers(t5_model):
    model = load_t5(t5_model)
    args = ModelArguments(model_name_or_path=t5_model, lora_r=4, lora_target_modules=["q", "query"])
    with pytest.raises(UserError) as error:
        apply_lora(model, args)
    message = str(error.value)
    assert "--lora_target_modules: 'query' matches none of the model's Linear layers" in message
    for name in ("q (", "k (", "v (", "o (", "wi (", "wo (", "lm_head (1)"):
        assert name in message, name
    assert "Fix: pass --lora_target_modules" in message
    assert (
        apply_lora(load_t5(t5_model), ModelArguments(model_name_or_path=t5_model, lora_target_modules=None)) is not None
    )


# --------------------------------------------------------------------------- the Trainer script: a LoRA run


@pytest.fixture(scope="module")
def wordy_t5(tmp_path_factory, t5_model) -> str:
    """The tiny T5 with its special tokens suppressed in generation: every summary is made of words."""
    from transformers import AutoTokenizer

    folder = str(tmp_path_factory.mktemp("lora") / "wordy-t5")
    model = load_t5(t5_model)
    model.generation_config.suppress_tokens = [0, 1, 2, 3]
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(t5_model).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, wordy_t5, corpus_files) -> str:
    out = tmp_path_factory.mktemp("lora") / "run"
    args = quick_args(
        wordy_t5,
        corpus_files,
        out,
        "--do_train",
        "--do_eval",
        "--predict_with_generate",
        "--max_eval_samples",
        "4",
        "--max_steps",
        str(STEPS),
        "--save_steps",
        "2",
        "--learning_rate",
        "3e-2",
        "--disable_tqdm",
        "true",
        *LORA,
        "--merge_adapter",
    )
    result = run_script(TRAINER_SCRIPT, args)
    assert_ok(result)
    assert "LoRA (r=4, alpha=8, dropout=0.05) on q,v: training" in result.stderr
    return str(out)


def test_the_output_is_a_peft_adapter_on_the_unchanged_base_model(lora_run, wordy_t5):
    from peft import PeftModel
    from safetensors.torch import load_file

    names = set(os.listdir(lora_run))
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "config.json"} <= names
    assert "model.safetensors" not in names  # no full weights at the top: the adapter folder
    config = read_json(os.path.join(lora_run, "adapter_config.json"))
    assert config["base_model_name_or_path"] == os.path.abspath(wordy_t5)
    assert config["r"] == 4 and config["lora_alpha"] == 8 and sorted(config["target_modules"]) == ["q", "v"]
    assert read_json(os.path.join(lora_run, "seqtune_run.json"))["status"] == "finished"
    # seqtune's settings for `seqtune summarize` travel in config.json beside the adapter.
    assert read_json(os.path.join(lora_run, "config.json"))["task_specific_params"]["summarization"]["prefix"]

    adapter = load_file(os.path.join(lora_run, "adapter_model.safetensors"))
    assert adapter and all(".lora_A." in name or ".lora_B." in name for name in adapter)
    assert any(".lora_B." in name and tensor.abs().sum() > 0 for name, tensor in adapter.items())  # trained
    unloaded = PeftModel.from_pretrained(load_t5(wordy_t5), lora_run).unload()  # the adapter taken out again
    base = load_t5(wordy_t5).state_dict()
    assert all(torch.equal(unloaded.state_dict()[name], tensor) for name, tensor in base.items())  # frozen

    card = open(os.path.join(lora_run, "README.md"), encoding="utf-8").read()
    assert yaml.safe_load(card.split("---\n")[1])["library_name"] == "peft"
    assert "A LoRA adapter (PEFT) for" in card and wordy_t5 in card and "PeftModel.from_pretrained" in card


def test_merged_model_generates_exactly_what_the_adapter_model_generates(lora_run, wordy_t5, corpus_files):
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lora_run)
    adapter_model = PeftModel.from_pretrained(load_t5(wordy_t5), lora_run).eval()
    merged = load_t5(os.path.join(lora_run, "merged"))
    assert "model.safetensors" in os.listdir(os.path.join(lora_run, "merged"))
    texts = validation_texts(corpus_files)
    expected = generate(adapter_model, tokenizer, texts)
    assert generate(merged, tokenizer, texts) == expected
    assert expected != generate(load_t5(wordy_t5), tokenizer, texts)  # the adapter changed the model
    assert len({tuple(ids) for ids in expected}) > 1


def test_a_checkpoint_holds_the_adapter_and_the_optimizer_state_of_its_parameters_only(lora_run, wordy_t5):
    from safetensors.torch import load_file

    checkpoint = os.path.join(lora_run, f"checkpoint-{STEPS}")
    names = set(os.listdir(checkpoint))
    assert {"adapter_model.safetensors", "optimizer.pt", "seqtune_checkpoint.json", "trainer_state.json"} <= names
    assert "model.safetensors" not in names and "README.md" not in names  # PEFT's own card is not seqtune's
    assert "task_specific_params" in read_json(os.path.join(checkpoint, "config.json"))  # for `seqtune summarize`
    assert torture.checkpoint_problems(checkpoint, STEPS) == []  # manifest, sizes, loadable weights, step
    trainable = len(load_file(os.path.join(checkpoint, "adapter_model.safetensors")))
    optimizer = torch.load(os.path.join(checkpoint, "optimizer.pt"), weights_only=True)
    assert len(optimizer["state"]) == trainable == sum(len(group["params"]) for group in optimizer["param_groups"])
    # A full checkpoint holds at least the model and Adam's two moments of every weight.
    full_at_least = 3 * os.path.getsize(os.path.join(wordy_t5, "model.safetensors"))
    assert folder_bytes(checkpoint) * 5 < full_at_least


def test_resuming_with_other_lora_flags_or_without_lora_is_refused(lora_run, wordy_t5):
    checkpoint = os.path.join(lora_run, f"checkpoint-{STEPS}")
    with pytest.raises(UserError, match="holds a LoRA adapter, but this run trains every weight"):
        check_same_model(checkpoint, load_t5(wordy_t5))
    other_rank = apply_lora(load_t5(wordy_t5), ModelArguments(model_name_or_path=wordy_t5, lora_r=8))
    with pytest.raises(UserError, match="holds another LoRA adapter than this run's .*another --lora_r"):
        check_same_model(checkpoint, other_rank)
    same = apply_lora(load_t5(wordy_t5), ModelArguments(model_name_or_path=wordy_t5, lora_r=4))
    check_same_model(checkpoint, same)  # the run's own flags: accepted


def test_seqtune_summarize_loads_the_adapter_folder_and_a_checkpoint_offline(lora_run, tmp_path, corpus_files):
    from seqtune.summarize import main

    document = tmp_path / "article.txt"
    document.write_text(validation_texts(corpus_files, 1)[0], encoding="utf-8")
    outputs = {}
    for name, model in (
        ("adapter", lora_run),
        ("merged", os.path.join(lora_run, "merged")),
        ("checkpoint", os.path.join(lora_run, f"checkpoint-{STEPS}")),  # no config.json: the adapter alone
    ):
        target = tmp_path / f"{name}.jsonl"
        assert main(["--model", model, "--output", str(target), "--max_length", "8", str(document)]) == 1
        outputs[name] = [json.loads(line)["summary"] for line in target.read_text().splitlines()]
    assert outputs["adapter"] == outputs["merged"] == outputs["checkpoint"]
    assert outputs["adapter"][0].strip()  # a real summary, not an empty one


# --------------------------------------------------------------------------- killed and resumed


def kill_and_resume(script: str, model: str, files: dict, workdir, modes: list[str], seed: int) -> tuple[str, str]:
    """torture.py's attempts with the LoRA flags: kill at each of `modes`, restart the same command, check
    every visible checkpoint and each resume point; returns the finished output dir and that of an
    uninterrupted run of the same command."""
    workdir = str(workdir)
    out = os.path.join(workdir, "run")
    max_steps = 2 * (3 * len(modes) + 4)
    command = torture.build_command(script, model, files, out, max_steps, 2, 2, seed) + LORA + ["--lora_dropout", "0.1"]
    env, logs = torture.child_env(workdir), os.path.join(workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    rng, expected, kills = random.Random(seed), None, 0
    for number, mode in enumerate([*modes, None], start=1):
        attempt = torture.run_attempt(number, command, out, env, logs, mode, rng, 8.0, 300.0)
        log = open(attempt.log, errors="replace").read()
        resumed = torture._resumed_from(attempt.log)
        if resumed is not None or not attempt.killed or attempt.published:
            assert resumed == expected, f"attempt {number} resumed from {resumed}, expected {expected}\n{log[-3000:]}"
        for step, folder in torture.visible_checkpoints(out).items():
            assert torture.checkpoint_problems(folder, step) == [], log[-3000:]
            assert "adapter_model.safetensors" in os.listdir(folder) and "model.safetensors" not in os.listdir(folder)
        if attempt.killed:
            kills, expected = kills + 1, attempt.newest_after
            continue
        assert attempt.returncode == 0, log[-4000:]
        break
    assert kills == len(modes)
    assert read_json(os.path.join(out, "seqtune_run.json"))["status"] == "finished"
    assert not [name for name in os.listdir(out) if name.startswith(".seqtune-")]
    assert "adapter_model.safetensors" in os.listdir(out) and "model.safetensors" not in os.listdir(out)
    if "no_trainer" in script:
        assert torture.loop_completed_steps(os.path.join(out, f"step_{max_steps}")) == max_steps
    else:
        assert read_json(os.path.join(out, "trainer_state.json"))["global_step"] == max_steps
    reference = os.path.join(workdir, "reference")
    command = torture.build_command(script, model, files, reference, max_steps, 2, 2, seed) + LORA
    result = subprocess.run(command + ["--lora_dropout", "0.1"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, reference


@pytest.mark.timeout(600)
def test_loop_lora_run_killed_twice_ends_with_the_adapter_of_an_uninterrupted_run(tmp_path, t5_model, corpus_files):
    out, reference = kill_and_resume(LOOP_SCRIPT, t5_model, corpus_files, tmp_path, ["checkpoint", "step"], seed=2)
    equal, detail = torture.compare_weights(
        os.path.join(out, "adapter_model.safetensors"), os.path.join(reference, "adapter_model.safetensors")
    )
    assert equal, detail


@pytest.mark.timeout(600)
def test_trainer_lora_run_killed_twice_ends_with_the_adapter_of_an_uninterrupted_run(tmp_path, t5_model, corpus_files):
    out, reference = kill_and_resume(TRAINER_SCRIPT, t5_model, corpus_files, tmp_path, ["checkpoint", "final"], seed=1)
    equal, detail = torture.compare_weights(
        os.path.join(out, "adapter_model.safetensors"), os.path.join(reference, "adapter_model.safetensors")
    )
    assert equal, detail


# --------------------------------------------------------------------------- torchrun


def logged_losses(output_dir) -> dict[int, float]:
    with open(os.path.join(output_dir, "log_history.jsonl"), encoding="utf-8") as handle:
        events = [json.loads(line) for line in handle]
    return {event["step"]: event["loss"] for event in events if event.get("event") == "train"}


@pytest.mark.timeout(600)
def test_torchrun_two_processes_train_lora_like_one_with_both_scripts(tmp_path, t5_model, corpus_files):
    from safetensors.torch import load_file

    def trainer_args(out, batch):
        return quick_args(
            t5_model,
            corpus_files,
            out,
            "--do_train",
            "--max_steps",
            str(STEPS),
            "--save_steps",
            "2",
            "--logging_steps",
            "1",
            "--per_device_train_batch_size",
            str(batch),
            "--disable_tqdm",
            "true",
            *LORA,
            "--lora_dropout",
            "0",
        )

    single, double, loop = tmp_path / "single", tmp_path / "double", tmp_path / "loop"
    assert_ok(run_script(TRAINER_SCRIPT, trainer_args(single, 4)))
    assert_ok(run_script(TRAINER_SCRIPT, trainer_args(double, 2), launcher=torchrun(2)))
    losses, expected = logged_losses(double), logged_losses(single)
    assert sorted(expected) == list(range(1, STEPS + 1)) and sorted(losses) == sorted(expected)
    for step in expected:
        assert losses[step] == pytest.approx(expected[step], rel=1e-4), step
    a = load_file(os.path.join(double, "adapter_model.safetensors"))
    b = load_file(os.path.join(single, "adapter_model.safetensors"))
    assert set(a) == set(b) and all(torch.allclose(a[name], b[name], atol=1e-5) for name in a)
    checkpoint = double / f"checkpoint-{STEPS}"
    assert torture.checkpoint_problems(str(checkpoint), STEPS) == []
    assert {"adapter_model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"} <= set(
        os.listdir(checkpoint)
    )
    assert "model.safetensors" not in os.listdir(checkpoint)

    # The Accelerate script under torchrun: its checkpoints and its output are the adapter too.
    loop_args = quick_args(
        t5_model, corpus_files, loop, "--max_train_steps", str(STEPS), "--checkpointing_steps", "2", *LORA
    )
    loop_args += ["--per_device_train_batch_size", "2", "--max_eval_samples", "4"]
    assert_ok(run_script(LOOP_SCRIPT, loop_args, launcher=torchrun(2)))
    assert "adapter_model.safetensors" in os.listdir(loop / "step_4")
    assert "model.safetensors" not in os.listdir(loop / "step_4")
    assert torture.checkpoint_problems(str(loop / "step_4"), STEPS) == []
    from peft import PeftModel

    PeftModel.from_pretrained(load_t5(t5_model), str(loop))  # loads


# --------------------------------------------------------------------------- --push_to_hub


def test_push_to_hub_uploads_the_adapter_with_a_card_naming_the_base_model(t5_model, corpus_files, tmp_path):
    from fake_hub import FakeHub, User, hub_env

    token = "hf_seqtuneLoraWriteToken5Hx"
    hub = FakeHub({token: User("alice")}).start()
    try:
        env = hub_env(hub.url, tmp_path, token)
        out = tmp_path / "out"
        args = quick_args(t5_model, corpus_files, out, "--do_train", "--max_steps", "2", "--save_steps", "2", *LORA)
        args += ["--merge_adapter", "--push_to_hub", "--hub_model_id", "lora-summarizer", "--hub_strategy", "end"]
        assert_ok(run_script(TRAINER_SCRIPT, args, env=env, timeout=300))
        files = hub.repos["alice/lora-summarizer"].files
    finally:
        hub.stop()
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json", "README.md"):
        with open(out / name, "rb") as handle:
            assert files[name] == handle.read(), name
    assert "model.safetensors" not in files and not any(path.startswith("merged/") for path in files)
    card = files["README.md"].decode()
    assert yaml.safe_load(card.split("---\n")[1])["library_name"] == "peft"
    assert f"A LoRA adapter (PEFT) for `{t5_model}`" in card and "## LoRA adapter" in card
    assert "LoRA r=4, alpha=8" in card


# --------------------------------------------------------------------------- the benchmark's own logic


def test_lora_benchmark_runs_both_systems_on_the_same_steps_and_reports_ratios(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import bench_lora
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    files = {"train": "t.jsonl", "validation": "v.jsonl", "test": "x.jsonl", "pretrain": "p.jsonl"}
    config = {
        "model": "m",
        "files": files,
        "max_source_length": 64,
        "max_target_length": 16,
        "batch_size": 8,
        "eval_batch_size": 8,
        "learning_rate": 3e-4,
        "lora_lr": 1e-3,
        "lora_r": 8,
        "seed": 0,
        "steps": 30,
        "pretrain_steps": 20,
        "evaluation": 16,
    }
    full, lora = (bench_lora.trainer_flags(config, "out", system) for system in ("full", "lora"))
    assert full[full.index("--max_steps") + 1] == lora[lora.index("--max_steps") + 1] == "30"
    assert full[full.index("--learning_rate") + 1] == "0.0003" and lora[lora.index("--learning_rate") + 1] == "0.001"
    assert "--lora_r" in lora and "--lora_r" not in full
    pretrain = bench_lora.trainer_flags(config, "out", "pretrain")
    assert "p.jsonl" in pretrain and "t.jsonl" not in pretrain and "--lora_r" not in pretrain
    assert "--do_train" not in bench_lora.trainer_flags(config, "out", "base")
    text = bench_lora.table(
        {
            "base": {"eval_rouge1": 1.0},
            "full": {"trainable": 1000, "checkpoint_mb": 4.0, "eval_rouge1": 50.0},
            "lora": {"trainable": 10, "checkpoint_mb": 0.5, "eval_rouge1": 40.0},
        },
        8,
    )
    assert "LoRA r=8" in text and "LoRA/full" in text
    assert [line.split()[-1] for line in text.splitlines()[1:]] == ["0.010", "0.125", "0.800"]
