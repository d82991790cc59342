"""The TensorFlow recipe's model: transformers 4's TF classes, with weights in PyTorch's format.

transformers 5 has no TensorFlow models, and transformers 4 cannot read the safetensors files
transformers 5 writes. So weights cross as plain arrays: read from PyTorch-format safetensors
(a hub model, a folder of the PyTorch scripts or of transformers 5) into the TF model by
transformers' own name mapping, and written back the same way. A finished TF run is an ordinary
`from_pretrained` folder for the PyTorch scripts, `seqtune summarize` and transformers 5.

Needs tensorflow, tf-keras and transformers 4.x (`.venv-tf`, requirements-tf.txt).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from .errors import UserError
from .modeling import _explain_load_error, _hub_options

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


def _weight_files(name: str, model_args) -> list[str] | None:
    """The safetensors file(s) of a hub model or folder (one file or the shards of an index); None if it has none."""
    from transformers.utils import cached_file

    options = {key: value for key, value in _hub_options(model_args).items() if key != "trust_remote_code"}
    found = {"_raise_exceptions_for_missing_entries": False, "_raise_exceptions_for_connection_errors": False}
    single = cached_file(name, WEIGHTS_NAME, **options, **found)
    if single:
        return [single]
    index = cached_file(name, WEIGHTS_INDEX_NAME, **options, **found)
    if not index:
        return None
    with open(index, encoding="utf-8") as handle:
        shards = sorted(set(json.load(handle)["weight_map"].values()))
    return [cached_file(name, shard, **options) for shard in shards]


def read_pytorch_weights(name: str, model_args) -> dict | None:
    """The model's PyTorch-format weights as numpy arrays (None: it has no safetensors file)."""
    from safetensors.numpy import load_file

    files = _weight_files(name, model_args)
    if files is None:
        return None
    weights = {}
    for path in files:
        try:
            weights.update(load_file(path))
        except (OSError, ValueError, TypeError) as error:  # bfloat16 has no numpy type
            raise UserError(
                f"could not read the weights of {name!r} ({os.path.basename(path)}): {error}. Fix: save the model in "
                f"float32 (from_pretrained(..., dtype='float32').save_pretrained(folder)) and pass that folder."
            ) from None
    return weights


def create_tf_model(model_args, config, label: str, tokenizer):
    """The TF model of --model_name_or_path (PyTorch-format weights, or the hub's TF weights), or a new one."""
    from transformers import TFAutoModelForSeq2SeqLM
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    name = model_args.model_name_or_path
    try:
        model = TFAutoModelForSeq2SeqLM.from_config(config)
    except ValueError as error:
        raise UserError(
            f"{label!r} is a {config.model_type} model, which has no TensorFlow class in transformers "
            f"({error}). Fix: use the PyTorch scripts (examples/pytorch/summarization) for it."
        ) from None
    weights = read_pytorch_weights(name, model_args) if name else None
    if weights is not None:
        try:
            load_pytorch_state_dict_in_tf2_model(model, weights, skip_logger_warnings=True)
        except (AttributeError, ValueError) as error:
            raise UserError(
                f"the weights of {name!r} do not fit a {type(model).__name__}: {error}. Fix: pass the folder or "
                f"hub id of a {config.model_type} model whose config.json matches its weights."
            ) from None
    elif name:  # an older hub model with TensorFlow weights (tf_model.h5) and no safetensors
        try:
            model = TFAutoModelForSeq2SeqLM.from_pretrained(name, config=config, **_hub_options(model_args))
        except (OSError, ValueError) as error:
            raise _explain_load_error("model", name, error) from None
    else:
        model(model.dummy_inputs, training=False)  # builds the new model's weights
    if len(tokenizer) > config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    return model


def _pytorch_names(model):
    """(PyTorch name, whether the array is transposed there, variable) for each of the TF model's weights."""
    from transformers.modeling_tf_pytorch_utils import TransposeType, convert_tf_weight_name_to_pt_weight_name

    for variable in model.weights:
        name, transpose = convert_tf_weight_name_to_pt_weight_name(variable.name, tf_weight_shape=variable.shape)
        if transpose not in (TransposeType.NO, TransposeType.SIMPLE):  # convolutions: not in seq2seq text models
            raise ValueError(f"{variable.name}: no conversion for {transpose}")
        yield name, transpose is TransposeType.SIMPLE, variable


def pytorch_weight_shapes(model) -> dict[str, tuple[int, ...]]:
    """{PyTorch weight name: shape} of the TF model (to compare with a checkpoint's, no values read)."""
    return {
        name: tuple(reversed(variable.shape) if transposed else variable.shape)
        for name, transposed, variable in _pytorch_names(model)
    }


def pytorch_weights(model) -> dict[str, np.ndarray]:
    """The TF model's weights under their PyTorch names and layouts (what PyTorch's save_pretrained writes)."""
    return {
        name: np.ascontiguousarray(variable.numpy().T if transposed else variable.numpy())
        for name, transposed, variable in _pytorch_names(model)
    }


def save_pytorch_format(model, tokenizer, folder: str) -> None:
    """Write `folder` as PyTorch's save_pretrained would: config, generation config, model.safetensors, tokenizer."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(folder)
    save_file(pytorch_weights(model), os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
