"""OpenAI's original GPT-2 release: a TensorFlow checkpoint (``model.ckpt.*``) and ``hparams.json``.

Weights are Conv1D [1, in, out] with a leading axis of 1; ``c_attn`` packs q|k|v; the output head
is the token embedding (there is no separate tensor). Read and written by ``tensor_bundle``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..readers import read_json
from ..tensor_bundle import read_bundle, write_bundle
from ..tokenizer import FILE_NAMES
from .base import Candidate, ConfigKey, ConfigTable, Format, Raw
from .table import MappingTable

PREFIX = "model.ckpt"
TOKENIZER_FILES = FILE_NAMES[1]  # encoder.json, vocab.bpe: Hugging Face's vocab.json, merges.txt
# The files of a release in OpenAI's storage that loading needs, in the order they are fetched
# (model.ckpt.meta, TF's graph definition, is left out: no reader here needs it).
RELEASE_FILES = ("checkpoint", "encoder.json", "hparams.json", "vocab.bpe",
                 f"{PREFIX}.index", f"{PREFIX}.data-00000-of-00001")
SIZES = ("124M", "355M", "774M", "1558M")
PRESET_SIZES = {"gpt2": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"}

TABLE = MappingTable.parse("openai", """
    token_embedding_table.weight        model/wte
    position_embedding_table.weight     model/wpe
    attention_norm.scale                model/h{}/ln_1/g
    attention_norm.shift                model/h{}/ln_1/b
    attention.qkv.weight                model/h{}/attn/c_attn/w    squeeze, transpose, split
    attention.qkv.bias                  model/h{}/attn/c_attn/b    split
    attention.output_projection.weight  model/h{}/attn/c_proj/w    squeeze, transpose
    attention.output_projection.bias    model/h{}/attn/c_proj/b
    feed_forward_norm.scale             model/h{}/ln_2/g
    feed_forward_norm.shift             model/h{}/ln_2/b
    feed_forward.expansion.weight       model/h{}/mlp/c_fc/w       squeeze, transpose
    feed_forward.expansion.bias         model/h{}/mlp/c_fc/b
    feed_forward.contraction.weight     model/h{}/mlp/c_proj/w     squeeze, transpose
    feed_forward.contraction.bias       model/h{}/mlp/c_proj/b
    layer_norm.scale                    model/ln_f/g
    layer_norm.shift                    model/ln_f/b
    """)
# hparams.json key <-> model config key (all required)
CONFIG_TABLE = ConfigTable((
    ConfigKey("n_vocab", "vocab_size"),
    ConfigKey("n_ctx", "context_length"),
    ConfigKey("n_embd", "embedding_dimension"),
    ConfigKey("n_head", "number_of_heads"),
    ConfigKey("n_layer", "number_of_layers"),
), assumes={"dropout_rate": 0.1, "layer_norm_epsilon": 1e-5, "qkv_bias": True, "bias": True,
            "gelu_approximation": "tanh"})
HINT = "hparams.json needs " + ", ".join(key.theirs for key in CONFIG_TABLE.keys)


def config_from_hparams(hparams: dict, *, origin: str) -> dict:
    """An ``hparams.json`` dict -> the model config (the head is the token embedding).

    Raises:
        ConfigError: naming the keys that are missing or cannot work.
    """
    return CONFIG_TABLE.to_model(hparams, origin=origin, hint=HINT,
                                 extra={"tie_output_head": True})


class OpenAI(Format):
    name = "openai"
    name_table = TABLE
    config_table = CONFIG_TABLE
    config_hint = HINT
    title = "OpenAI's TF checkpoint"
    summary = "`hparams.json`, `checkpoint`, `model.ckpt.index` + `.data-00000-of-00001`"
    dtypes = ("f32", "f16", "bf16")
    head = "tied"
    vocabulary = "rows"
    cannot_represent = ("an untied head, an epsilon other than 1e-5 (refused); the exact GELU "
                        "(refused unless approximated); no biases (zeros: exact)")
    proof = "TensorFlow's `tf.train.load_checkpoint` reads the export; every tensor equal"
    tokenizer_names = TOKENIZER_FILES

    def recognises(self, candidate: Candidate) -> bool:
        folder = candidate.path
        return (folder / "hparams.json").is_file() and (folder / f"{PREFIX}.index").is_file()

    def read_raw(self, candidate: Candidate) -> Raw:
        """Tensors (CRC-checked, memory-mapped) and the hparams of a release folder."""
        folder = candidate.path
        return Raw(str(folder / PREFIX), read_bundle(folder / PREFIX),
                   read_json(folder / "hparams.json"), config_origin=str(folder / "hparams.json"))

    def write_raw(self, destination: Path, tensors, config: dict, *, dtype: str | None,
                  tokenizer: Path | None) -> None:
        """``hparams.json``, ``checkpoint`` and the ``model.ckpt`` bundle, as OpenAI released."""
        hparams = CONFIG_TABLE.from_model({**config, "vocab_size": config["padded_vocab_size"]})
        (destination / "hparams.json").write_text(json.dumps(hparams, indent=2))
        (destination / "checkpoint").write_text(f'model_checkpoint_path: "{PREFIX}"\n'
                                                f'all_model_checkpoint_paths: "{PREFIX}"\n')
        write_bundle(destination / PREFIX, dict(tensors))

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
