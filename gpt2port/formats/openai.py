"""OpenAI's original GPT-2 release: a TensorFlow checkpoint (``model.ckpt.*``) and ``hparams.json``.

Weights are Conv1D [1, in, out] with a leading axis of 1; ``c_attn`` packs q|k|v; the output head
is the token embedding (there is no separate tensor). Read and written by ``tensor_bundle``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import ConfigError
from ..readers import read_json
from ..tensor_bundle import read_bundle, write_bundle
from ..tokenizer import FILE_NAMES
from .base import Candidate, Checkpoint, ConfigKey, Format, state_for_writing
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
# hparams.json key <-> model config key (all required)
HPARAMS = (
    ConfigKey("n_vocab", "vocab_size"),
    ConfigKey("n_ctx", "context_length"),
    ConfigKey("n_embd", "embedding_dimension"),
    ConfigKey("n_head", "number_of_heads"),
    ConfigKey("n_layer", "number_of_layers"),
)


def config_from_hparams(hparams: dict, *, origin: str) -> dict:
    """An ``hparams.json`` dict -> the model config.

    Raises:
        ConfigError: naming the keys that are missing or not positive integers.
    """
    bad = [key.theirs for key in HPARAMS
           if not (type(hparams.get(key.theirs)) is int and hparams[key.theirs] > 0)]
    if bad:
        raise ConfigError(f"{origin}: {', '.join(bad)} missing or not a positive integer",
                          hint="hparams.json needs " + ", ".join(key.theirs for key in HPARAMS))
    config = {key.ours: hparams[key.theirs] for key in HPARAMS}
    return {**config, **OpenAI.assumes, "tie_output_head": True}


class OpenAI(Format):
    name = "openai"
    name_table = TABLE
    title = "OpenAI's TF checkpoint"
    summary = "`hparams.json`, `checkpoint`, `model.ckpt.index` + `.data-00000-of-00001`"
    dtypes = ("f32", "f16", "bf16")
    head = "tied"
    config_keys = HPARAMS
    assumes: ClassVar[dict] = {"dropout_rate": 0.1, "layer_norm_epsilon": 1e-5, "qkv_bias": True,
                               "bias": True, "gelu_approximation": "tanh"}
    vocabulary = "rows"
    cannot_represent = ("an untied head, an epsilon other than 1e-5 (refused); the exact GELU "
                        "(refused unless approximated); no biases (zeros: exact)")
    proof = "TensorFlow's `tf.train.load_checkpoint` reads the export; every tensor equal"
    tokenizer_names = TOKENIZER_FILES

    def recognises(self, candidate: Candidate) -> bool:
        folder = candidate.path
        return (folder / "hparams.json").is_file() and (folder / f"{PREFIX}.index").is_file()

    def read(self, candidate: Candidate) -> Checkpoint:
        """Tensors (CRC-checked, memory-mapped) and the model config of a release folder."""
        folder = candidate.path
        config = config_from_hparams(read_json(folder / "hparams.json"),
                                     origin=str(folder / "hparams.json"))
        return Checkpoint(str(folder / PREFIX), read_bundle(folder / PREFIX), config, TABLE,
                          self)

    def write(self, model, folder: Path, *, dtype: str | None, tokenizer: Path | None) -> None:
        """``hparams.json``, ``checkpoint`` and the ``model.ckpt`` bundle, as OpenAI released."""
        config = model.config
        tensors = from_model(TABLE, state_for_writing(model, dtype), config["number_of_layers"])
        folder = Path(folder)
        hparams = {key.theirs: config[key.ours] for key in HPARAMS}
        hparams["n_vocab"] = config["padded_vocab_size"]
        (folder / "hparams.json").write_text(json.dumps(hparams, indent=2))
        (folder / "checkpoint").write_text(f'model_checkpoint_path: "{PREFIX}"\n'
                                           f'all_model_checkpoint_paths: "{PREFIX}"\n')
        write_bundle(folder / PREFIX, tensors)

    def reference_tensors(self, path: Path) -> tuple[dict[str, np.ndarray], dict]:
        """``model/h0/ln_1/g`` [1, D]... as ``h.0.ln_1.weight`` [D], as picoGPT reads them."""
        arrays = {}
        for name, tensor in read_bundle(Path(path) / PREFIX).items():
            name = re.sub(r"^h(\d+)/", r"h.\1/", name.removeprefix("model/"))  # h.0/ln_1/g
            name = re.sub(r"/[wg]$", "/weight", re.sub(r"/b$", "/bias", name)).replace("/", ".")
            name = name if name.endswith(("weight", "bias")) else f"{name}.weight"  # wte, wpe
            array = tensor.float().numpy()
            arrays[name] = array[0] if array.ndim == 3 else array  # Conv1D's leading axis of 1
        hparams = Path(path) / "hparams.json"
        return arrays, config_from_hparams(read_json(hparams), origin=str(hparams))
