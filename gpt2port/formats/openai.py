"""OpenAI's original GPT-2 release: a TensorFlow checkpoint (``model.ckpt.*``) and ``hparams.json``.

Weights are Conv1D [1, in, out] with a leading axis of 1; ``c_attn`` packs q|k|v; the output head
is the token embedding (there is no separate tensor). Read and written by ``tensor_bundle``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..model import GPTModel
from ..readers import read_json
from ..tensor_bundle import read_bundle, write_bundle
from ..tokenizer import FILE_NAMES
from .huggingface import BLOCK, QKV
from .table import Chain, MappingTable, Split, Squeeze, Transpose, from_model, rule

PREFIX = "model.ckpt"
CONV1D = Chain(Squeeze(0), Transpose())
PACKED_QKV_WEIGHT = Chain(Squeeze(0), Transpose(), Split(3, dim=0))
TOKENIZER_FILES = FILE_NAMES[1]  # encoder.json, vocab.bpe: Hugging Face's vocab.json, merges.txt
# The files of a release in OpenAI's storage that loading needs, in the order they are fetched
# (model.ckpt.meta, TF's graph definition, is left out: no reader here needs it).
RELEASE_FILES = ("checkpoint", "encoder.json", "hparams.json", "vocab.bpe",
                 f"{PREFIX}.index", f"{PREFIX}.data-00000-of-00001")
SIZES = ("124M", "355M", "774M", "1558M")
PRESET_SIZES = {"gpt2": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"}

TABLE = MappingTable(
    format="openai",
    rules=(
        rule("model/wte", "token_embedding_table.weight"),
        rule("model/wpe", "position_embedding_table.weight"),
        rule("model/h{}/ln_1/g", f"{BLOCK}.attention_norm.scale"),
        rule("model/h{}/ln_1/b", f"{BLOCK}.attention_norm.shift"),
        rule("model/h{}/attn/c_attn/w", tuple(f"{p}.weight" for p in QKV), PACKED_QKV_WEIGHT),
        rule("model/h{}/attn/c_attn/b", tuple(f"{p}.bias" for p in QKV), Split(3, dim=0)),
        rule("model/h{}/attn/c_proj/w", f"{BLOCK}.attention.output_projection.weight", CONV1D),
        rule("model/h{}/attn/c_proj/b", f"{BLOCK}.attention.output_projection.bias"),
        rule("model/h{}/ln_2/g", f"{BLOCK}.feed_forward_norm.scale"),
        rule("model/h{}/ln_2/b", f"{BLOCK}.feed_forward_norm.shift"),
        rule("model/h{}/mlp/c_fc/w", f"{BLOCK}.feed_forward.expansion.weight", CONV1D),
        rule("model/h{}/mlp/c_fc/b", f"{BLOCK}.feed_forward.expansion.bias"),
        rule("model/h{}/mlp/c_proj/w", f"{BLOCK}.feed_forward.contraction.weight", CONV1D),
        rule("model/h{}/mlp/c_proj/b", f"{BLOCK}.feed_forward.contraction.bias"),
        rule("model/ln_f/g", "layer_norm.scale"),
        rule("model/ln_f/b", "layer_norm.shift"),
    ),
)
# hparams.json key <-> model config key
HPARAMS = (
    ("n_vocab", "vocab_size"),
    ("n_ctx", "context_length"),
    ("n_embd", "embedding_dimension"),
    ("n_head", "number_of_heads"),
    ("n_layer", "number_of_layers"),
)


def is_checkpoint(folder: Path) -> bool:
    return (Path(folder) / "hparams.json").is_file() and (Path(folder) / f"{PREFIX}.index").is_file()


def config_from_hparams(hparams: dict, *, origin: str) -> dict:
    """An ``hparams.json`` dict -> the model config.

    Raises:
        ConfigError: naming the keys that are missing or not positive integers.
    """
    bad = [key for key, _ in HPARAMS
           if not (type(hparams.get(key)) is int and hparams[key] > 0)]
    if bad:
        raise ConfigError(f"{origin}: {', '.join(bad)} missing or not a positive integer",
                          hint="hparams.json needs " + ", ".join(key for key, _ in HPARAMS))
    config = {ours: hparams[theirs] for theirs, ours in HPARAMS}
    return {**config, "dropout_rate": 0.1, "qkv_bias": True, "layer_norm_epsilon": 1e-5,
            "tie_output_head": True}


def read(folder: Path):
    """Tensors (CRC-checked, memory-mapped) and the model config of a release folder."""
    folder = Path(folder)
    config = config_from_hparams(read_json(folder / "hparams.json"),
                                 origin=str(folder / "hparams.json"))
    return read_bundle(folder / PREFIX), config


def save(model: GPTModel, folder: Path) -> list[Path]:
    """Write ``hparams.json``, ``checkpoint`` and the ``model.ckpt`` bundle, as OpenAI released.

    Raises:
        ConfigError: for a model this format cannot hold (an untied head, another epsilon).
    """
    config = model.config
    if not config["tie_output_head"]:
        raise ConfigError("the OpenAI format has no output head of its own, and this model's "
                          "head is not tied to the token embedding",
                          hint="convert to hf, native or gguf instead")
    if config["layer_norm_epsilon"] != 1e-5 or not config["qkv_bias"]:
        raise ConfigError("the OpenAI format fixes layer_norm_epsilon=1e-5 and qkv_bias=True")
    state = {k: v for k, v in model.state_dict().items() if k != "output_head.weight"}
    tensors = from_model(TABLE, state, config["number_of_layers"])
    folder = Path(folder)
    hparams = {theirs: config[ours] for theirs, ours in HPARAMS}
    (folder / "hparams.json").write_text(json.dumps(hparams, indent=2))
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{PREFIX}"\n'
                                       f'all_model_checkpoint_paths: "{PREFIX}"\n')
    return write_bundle(folder / PREFIX, tensors)

