"""llama.cpp's GGUF for arch ``gpt2``: tensor names, metadata keys and tokenizer, via the ``gguf``
package (an optional dependency: ``pip install gpt2port[gguf]``).

Weights are stored as ``nn.Linear`` stores them, [out, in]; ``attn_qkv`` packs q|k|v.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..model import GPTModel
from ..tokenizer import tokenizer_files
from .huggingface import BLOCK, QKV
from .table import MappingTable, Split, from_model, rule

FILENAME = "model.gguf"
TABLE = MappingTable(
    format="gguf",
    rules=(
        rule("token_embd.weight", "token_embedding_table.weight"),
        rule("position_embd.weight", "position_embedding_table.weight"),
        rule("blk.{}.attn_norm.weight", f"{BLOCK}.attention_norm.scale"),
        rule("blk.{}.attn_norm.bias", f"{BLOCK}.attention_norm.shift"),
        rule("blk.{}.attn_qkv.weight", tuple(f"{p}.weight" for p in QKV), Split(3, dim=0)),
        rule("blk.{}.attn_qkv.bias", tuple(f"{p}.bias" for p in QKV), Split(3, dim=0)),
        rule("blk.{}.attn_output.weight", f"{BLOCK}.attention.output_projection.weight"),
        rule("blk.{}.attn_output.bias", f"{BLOCK}.attention.output_projection.bias"),
        rule("blk.{}.ffn_norm.weight", f"{BLOCK}.feed_forward_norm.scale"),
        rule("blk.{}.ffn_norm.bias", f"{BLOCK}.feed_forward_norm.shift"),
        rule("blk.{}.ffn_up.weight", f"{BLOCK}.feed_forward.expansion.weight"),
        rule("blk.{}.ffn_up.bias", f"{BLOCK}.feed_forward.expansion.bias"),
        rule("blk.{}.ffn_down.weight", f"{BLOCK}.feed_forward.contraction.weight"),
        rule("blk.{}.ffn_down.bias", f"{BLOCK}.feed_forward.contraction.bias"),
        rule("output_norm.weight", "layer_norm.scale"),
        rule("output_norm.bias", "layer_norm.shift"),
        rule("output.weight", "output_head.weight"),  # written always; re-tied on import
    ),
)
# gpt2.* metadata key <-> model config key
CONFIG_KEYS = (
    ("block_count", "number_of_layers"),
    ("context_length", "context_length"),
    ("embedding_length", "embedding_dimension"),
    ("attention.head_count", "number_of_heads"),
    ("attention.layer_norm_epsilon", "layer_norm_epsilon"),
)
END_OF_TEXT_ID = 50256


def _gguf():
    try:
        import gguf
    except ImportError:
        raise CheckpointError("GGUF needs the gguf package",
                              hint="pip install 'gpt2port[gguf]'") from None
    return gguf


def save(model: GPTModel, folder: Path, *, quantization: str = "f32",
         tokenizer: Path | None = None) -> Path:
    """Write ``folder/model.gguf`` with tensors in f32, f16 or q8_0 (2-D weights; norms and
    biases stay f32, as llama.cpp's converter does) and the tokenizer when its files are given."""
    gguf = _gguf()
    config = model.config
    state = dict(model.state_dict())  # a tied head is written out as its own tensor
    tensors = from_model(TABLE, state, config["number_of_layers"])
    path = Path(folder) / FILENAME
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(config["number_of_layers"])
    writer.add_context_length(config["context_length"])
    writer.add_embedding_length(config["embedding_dimension"])
    writer.add_feed_forward_length(4 * config["embedding_dimension"])
    writer.add_head_count(config["number_of_heads"])
    writer.add_layer_norm_eps(config["layer_norm_epsilon"])
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quantization])
    files = tokenizer_files(tokenizer) if tokenizer is not None else None
    if files is not None:
        _add_tokenizer(writer, gguf, *files, config["vocab_size"])
    for name, tensor in tensors.items():
        array = tensor.detach().float().contiguous().numpy()
        if array.ndim == 2 and quantization == "f16":
            writer.add_tensor(name, array.astype(np.float16))
        elif array.ndim == 2 and quantization == "q8_0" and array.shape[1] % 32 == 0:
            quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer, gguf, vocab_path: Path, merges_path: Path, vocab_size: int) -> None:
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    if len(vocab) != vocab_size:
        return  # a tokenizer of another size cannot describe this model's ids
    tokens = sorted(vocab, key=vocab.get)
    merges = [line for line in merges_path.read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t == "<|endoftext|>"
                            else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(END_OF_TEXT_ID)
    writer.add_eos_token_id(END_OF_TEXT_ID)


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (dequantized to f32 where quantized) and the model config of a GGUF file.

    Raises:
        CheckpointError: for a file that is not GGUF or not arch gpt2.
    """
    gguf = _gguf()
    try:
        return _read(gguf, Path(path))
    except CheckpointError:
        raise
    except Exception as error:  # the gguf package's parser raises many types on damaged files
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(error).__name__}: "
                              f"{error})", hint="the file is truncated or damaged") from None


def _read(gguf, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    reader = gguf.GGUFReader(str(path))

    def field(key: str):
        found = reader.fields.get(key)
        if found is None:
            raise CheckpointError(f"{path}: GGUF metadata lacks {key!r}")
        value = found.parts[found.data[0]]
        return bytes(value).decode() if found.types[0] == gguf.GGUFValueType.STRING else (
            value[0].item())

    if field("general.architecture") != "gpt2":
        raise CheckpointError(f"{path}: GGUF architecture is {field('general.architecture')!r}, "
                              "not 'gpt2'")
    config = {ours: field(f"gpt2.{key}") for key, ours in CONFIG_KEYS}
    # stored as float32: take the shortest decimal that is that float32 (1e-05, not 9.99999974e-06)
    config["layer_norm_epsilon"] = float(np.format_float_scientific(
        np.float32(config["layer_norm_epsilon"]), unique=True))
    tensors = {}
    for tensor in reader.tensors:
        data = tensor.data
        if tensor.tensor_type not in (gguf.GGMLQuantizationType.F32,
                                      gguf.GGMLQuantizationType.F16):
            data = gguf.quants.dequantize(data, tensor.tensor_type)
        tensors[tensor.name] = torch.from_numpy(np.array(data))
    config["vocab_size"] = tensors["token_embd.weight"].shape[0] if (
        "token_embd.weight" in tensors) else 0
    return tensors, {**config, "dropout_rate": 0.0, "qkv_bias": True}
