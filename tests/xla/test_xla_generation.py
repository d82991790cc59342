"""The XLA core that runs anywhere (no torch_xla needed): the fixed-size greedy decoder that
`seqtune.xla` puts in place of `model.generate` on XLA devices, the --num_cores check, the
pins of requirements-xla.txt, and xla_spawn.py where torch_xla is missing.

These run in the main suite and again under `make test-xla`."""

from __future__ import annotations

import os
import re

import pytest
import torch
from conftest import REPO, TRAINER_SCRIPT, run_script
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from seqtune.demo import synthetic_corpus
from seqtune.errors import UserError
from seqtune.xla import check_num_cores, fixed_size_generate, use_fixed_size_generation, xla_installed

XLA_SPAWN = os.path.join(REPO, "examples", "pytorch", "xla_spawn.py")


def load(path):
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = synthetic_corpus(8, seed=3)
    # Documents of different lengths, so the attention mask matters.
    texts = [" ".join(row["document"].split()[: 6 + 5 * i]) for i, row in enumerate(rows)]
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=64)
    return model, batch


def padded(ids, length, pad):
    return torch.nn.functional.pad(ids, (0, length - ids.shape[1]), value=pad)


def bias_eos(model, amount):
    """Add `amount` to the end-of-sequence logit (a hook on the output layer, seen by both decoders)."""
    eos = model.generation_config.eos_token_id
    bias = torch.zeros(model.config.vocab_size)
    bias[eos] = amount
    return model.get_output_embeddings().register_forward_hook(lambda module, inputs, output: output + bias)


def test_fixed_size_generate_gives_the_ids_of_greedy_generate_t5(t5_model):
    model, batch = load(t5_model)
    pad, eos, length = model.generation_config.pad_token_id, model.generation_config.eos_token_id, 14
    # A bias on the end-of-sequence logit that makes some sequences, not all, end early.
    for amount in [0.25 * i for i in range(200)]:
        hook = bias_eos(model, amount)
        reference = padded(model.generate(**batch, max_length=length), length, pad)
        ended = (reference[:, 1:-1] == eos).any(dim=1)
        if 0 < int(ended.sum()) < len(ended):
            break
        hook.remove()
    else:
        pytest.fail("no bias makes only some sequences end early")
    try:
        generated = fixed_size_generate(model, batch["input_ids"], batch["attention_mask"], max_length=length)
    finally:
        hook.remove()
    assert generated.shape == (len(reference), length)  # always the full length: static shapes
    assert torch.equal(generated, reference)
    # After its end-of-sequence token, an ended sequence holds only padding.
    row = int(ended.nonzero()[0])
    end = int((generated[row, 1:] == eos).nonzero()[0]) + 1
    assert (generated[row, end + 1 :] == pad).all()


def test_fixed_size_generate_gives_the_ids_of_greedy_generate_bart(bart_model):
    """BART starts decoding with its end-of-sequence token and forces one at max_length."""
    model, batch = load(bart_model)
    eos, length = model.generation_config.eos_token_id, 12
    assert model.generation_config.decoder_start_token_id == eos == model.generation_config.forced_eos_token_id
    hook = bias_eos(model, -1.0)  # the random tiny BART would end at once; let it write a few tokens
    try:
        reference = model.generate(**batch, max_length=length)
        generated = fixed_size_generate(model, batch["input_ids"], batch["attention_mask"], max_length=length)
    finally:
        hook.remove()
    assert reference.shape == (8, length)
    assert torch.equal(generated, reference)
    assert (generated[:, -1] == eos).all() and (generated[:, 1:-1] != eos).all()


def test_generate_is_replaced_for_greedy_search_and_kept_for_beam_search(t5_model):
    model, batch = load(t5_model)
    greedy = model.generate(**batch, max_length=10)
    beams = model.generate(**batch, max_length=10, num_beams=3)
    calls = []
    use_fixed_size_generation(model, step_end=lambda: calls.append(1))
    # Greedy settings: the fixed-size decoder (one step_end per decoding step), padded to max_length.
    out = model.generate(**batch, max_length=10, num_beams=1, synced_gpus=False)
    assert len(calls) == 9
    assert torch.equal(out, padded(greedy, 10, model.generation_config.pad_token_id))
    # max_new_tokens counts the generated tokens (the decoder start token comes on top).
    assert model.generate(**batch, max_new_tokens=4).shape[1] == 5
    # A caller that has run the encoder already (seqtune.generation) passes its outputs instead.
    calls.clear()
    encoded = model.get_encoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], return_dict=True
    )
    out = model.generate(encoder_outputs=encoded, attention_mask=batch["attention_mask"], max_length=10)
    assert len(calls) == 9
    assert torch.equal(out, padded(greedy, 10, model.generation_config.pad_token_id))
    # Beam search is not fixed-size: transformers' own generate() runs it, with the same result.
    calls.clear()
    assert torch.equal(model.generate(**batch, max_length=10, num_beams=3), beams)
    assert calls == []


def test_num_cores_check():
    check_num_cores(1, "CPU")
    check_num_cores(8, "TPU")
    with pytest.raises(UserError, match=r"--num_cores 2 with PJRT_DEVICE=CPU.*Fix: use --num_cores 1"):
        check_num_cores(2, "CPU")
    with pytest.raises(UserError, match="at least 1"):
        check_num_cores(0, "TPU")


def pins(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as handle:
        return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", handle.read(), flags=re.M))


def test_requirements_xla_pins_match_the_main_ones():
    """requirements-xla.txt: torch and torch_xla at the same version, everything else as in requirements.txt."""
    xla, main, dev = pins("requirements-xla.txt"), pins("requirements.txt"), pins("requirements-dev.txt")
    assert xla["torch"] == xla["torch_xla"]
    # DeepSpeed (GPUs and CPUs, not TPUs) and its own requirements stay out of the XLA venv.
    main = {
        k: v for k, v in main.items() if k not in ("deepspeed", "einops", "hjson", "msgpack", "ninja", "py-cpuinfo")
    }
    assert {k: v for k, v in main.items() if k != "torch"} == {
        k: v for k, v in xla.items() if k in main and k != "torch"
    }
    assert {k: v for k, v in xla.items() if k in dev} == {k: dev[k] for k in ("pytest", "pytest-timeout")}


@pytest.mark.skipif(xla_installed(), reason="torch_xla is installed here")
def test_xla_spawn_without_torch_xla_says_how_to_get_it(tmp_path):
    result = run_script(XLA_SPAWN, ["--num_cores", "1", TRAINER_SCRIPT, "--output_dir", str(tmp_path)], timeout=120)
    assert result.returncode == 2, result.stderr
    assert "seqtune: error: xla_spawn.py needs PyTorch/XLA (torch_xla)" in result.stderr
    assert "requirements-xla.txt" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.listdir(tmp_path)
