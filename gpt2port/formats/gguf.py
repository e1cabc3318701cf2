"""llama.cpp's GGUF for arch ``gpt2``: tensor names, metadata keys and tokenizer, via the ``gguf``
package (an optional dependency: ``pip install gpt2port[gguf]``).

Weights are stored as ``nn.Linear`` stores them, [out, in]; ``attn_qkv`` packs q|k|v.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..config import GPT2_VARIANT, feed_forward_width
from ..errors import CheckpointError, TokenizerError
from ..io import gguf_file
from ..io.arrays import Arrays
from ..text.vocabulary import KINDS, Vocabulary
from .base import Candidate, ConfigKey, ConfigTable, Format, Raw
from .gguf_tokenizer import UNIGRAM, add_tokenizer, read_tokenizer, sentencepiece_model
from .table import MappingTable

FILENAME = "model.gguf"
TABLE = MappingTable.parse("gguf", """
    token_embedding_table.weight        token_embd.weight
    position_embedding_table.weight     position_embd.weight
    attention_norm.scale                blk.{}.attn_norm.weight
    attention_norm.shift                blk.{}.attn_norm.bias
    attention.qkv.weight                blk.{}.attn_qkv.weight     split
    attention.qkv.bias                  blk.{}.attn_qkv.bias       split
    attention.output_projection.weight  blk.{}.attn_output.weight
    attention.output_projection.bias    blk.{}.attn_output.bias
    feed_forward_norm.scale             blk.{}.ffn_norm.weight
    feed_forward_norm.shift             blk.{}.ffn_norm.bias
    feed_forward.expansion.weight       blk.{}.ffn_up.weight
    feed_forward.expansion.bias         blk.{}.ffn_up.bias
    feed_forward.contraction.weight     blk.{}.ffn_down.weight
    feed_forward.contraction.bias       blk.{}.ffn_down.bias
    layer_norm.scale                    output_norm.weight
    layer_norm.shift                    output_norm.bias
    output_head.weight                  output.weight
    """)  # output.weight is written always; tied again on import when it equals token_embd
# gpt2.* metadata key <-> model config key (all required); the vocabulary is token_embd's rows
CONFIG_TABLE = ConfigTable((
    ConfigKey("gpt2.block_count", "number_of_layers"),
    ConfigKey("gpt2.context_length", "context_length"),
    ConfigKey("gpt2.embedding_length", "embedding_dimension"),
    ConfigKey("gpt2.attention.head_count", "number_of_heads"),
    ConfigKey("gpt2.attention.layer_norm_epsilon", "layer_norm_epsilon"),
    ConfigKey("gpt2.feed_forward_length", "feed_forward_width", None),
), assumes={**{key: value for key, value in GPT2_VARIANT.items() if key != "feed_forward_width"},
            "dropout_rate": 0.1, "qkv_bias": True, "bias": True, "gelu_approximation": "tanh"},
   derived={"vocab_size": "rows of `token_embd.weight`"})
# --dtype -> the type of 2-D weights (norms and biases stay f32, as llama.cpp's converter does)
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}
TENSOR_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}
TORCH_TYPES = {"float16": torch.float16, "float32": torch.float32}


def _quantized(tensor: torch.Tensor, dtype: str, gguf) -> np.ndarray:
    """A 2-D weight's bytes as ``bf16`` or ``q8_0`` rows, bit for bit as the gguf package makes
    them: bf16 by torch's conversion (round to nearest even, as the package does for finite
    values); q8_0 by the package's quantizer, on row chunks a thread per core (NumPy releases
    the GIL)."""
    values = tensor.detach().float().contiguous()
    if dtype == "bf16":
        return values.to(torch.bfloat16).view(torch.uint8).numpy()
    kind, rows = gguf.GGMLQuantizationType.Q8_0, values.numpy()
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(lambda part: gguf.quants.quantize(part, kind),
                         np.array_split(rows, min(len(rows), 4 * workers)))
        return np.concatenate(list(parts))


def _gguf():
    try:
        import gguf
    except ImportError:
        raise CheckpointError("GGUF needs the gguf package",
                              hint="pip install 'gpt2port[gguf]'") from None
    return gguf


def _encoding(shape: tuple[int, ...], dtype: str) -> str:
    """How a tensor of ``shape`` is stored for ``--dtype``: 2-D weights in it (quantized types
    need rows of whole 32-value blocks), norms and biases in f32, as llama.cpp's converter
    does."""
    if len(shape) == 2 and dtype == "f16":
        return "float16"
    if len(shape) == 2 and dtype != "f32" and shape[1] % 32 == 0:
        return "quantized"
    return "float32"


def _fields(gguf, reader, path: Path) -> dict:
    """The GGUF's scalar and string metadata."""
    def value(found):
        data = found.parts[found.data[0]]
        return bytes(data).decode() if found.types[0] == gguf.GGUFValueType.STRING else (
            data[0].item())
    return {key: value(found) for key, found in reader.fields.items()
            if found.types and found.types[0] != gguf.GGUFValueType.ARRAY and found.data}


def _config(fields: dict, path: Path) -> dict:
    """The GGUF's gpt2.* metadata for the config table.

    Raises:
        CheckpointError: for another architecture.
    """
    if fields.get("general.architecture") != "gpt2":
        raise CheckpointError(f"{path}: GGUF architecture is "
                              f"{fields.get('general.architecture')!r}, not 'gpt2'")
    config = {key.theirs: fields[key.theirs] for key in CONFIG_TABLE.keys
              if key.theirs in fields}
    epsilon = config.get("gpt2.attention.layer_norm_epsilon")
    if isinstance(epsilon, float):  # stored as float32: the shortest decimal that is that float32
        config["gpt2.attention.layer_norm_epsilon"] = float(np.format_float_scientific(
            np.float32(epsilon), unique=True))
    return config


def _tensors(gguf, reader) -> dict[str, np.ndarray]:
    """Every tensor as a NumPy array: a view of the (copy-on-write) mapped file, or dequantized
    to f32 where quantized."""
    tensors = {}
    for tensor in reader.tensors:
        data = tensor.data
        if tensor.tensor_type not in (gguf.GGMLQuantizationType.F32,
                                      gguf.GGMLQuantizationType.F16):
            data = gguf.quants.dequantize(data, tensor.tensor_type)
        tensors[tensor.name] = np.asarray(data)
    return tensors


def _read(path: Path, read, reader=None):
    """Run ``read(gguf, reader)`` (on the file parsed afresh, unless ``reader`` is given),
    turning the gguf package's errors into ours."""
    gguf = _gguf()
    try:
        return read(gguf, reader or gguf.GGUFReader(str(path), "c"))  # writable views: no copy
    except (CheckpointError, TokenizerError):
        raise
    except Exception as error:  # noqa: BLE001 - the gguf package's parser raises many types on damaged files
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(error).__name__}: "
                              f"{error})", hint="the file is truncated or damaged") from None


class Gguf(Format):
    name = "gguf"
    name_table = TABLE
    reference_reads_with = ("gpt2port.io.gguf_file: the GGUF specification in NumPy, not the gguf "
                            "package")
    head = "separate"
    title = "GGUF for llama.cpp, arch `gpt2`"
    summary = ("one `.gguf` file (or a folder holding `model.gguf`) with the tokenizer inside "
               "(needs the `gguf` package)")
    dtypes = tuple(FILE_TYPES)
    config_table = CONFIG_TABLE
    converts_dtype = False  # norms and biases stay f32: write_raw encodes each tensor
    vocabulary = "rows"
    cannot_represent = ("dropout (GPT-2's 0.1 assumed); the exact GELU (refused unless "
                        "approximated) and other activations (refused); an attention scale "
                        "other than 1/sqrt(head width) (folded into the query weights and "
                        "biases, stated); no biases (zeros: exact); a padded vocabulary")
    proof = ("llama.cpp (llama-cpp-python) runs the export: logits within 1.5e-3, same greedy "
             "tokens; the gguf package reads every tensor back")
    tokenizer = ("inside the file: every token with its type (control, user-defined), the "
                 "merges, bos/eos/padding ids (model `gpt2`); WordPiece as model `bert`; a "
                 "SentencePiece unigram model as model `t5`; required (llama.cpp loads no GGUF "
                 "without one: `--tokenizer` gives one); other tokenizers refused")
    folds_attention_scale = True  # llama.cpp's gpt2 graph scales by 1/sqrt(head width) only
    file_suffix = ".gguf"  # convert SRC model.gguf --to gguf: one file, as llama.cpp users expect

    def recognises(self, candidate: Candidate) -> bool:
        path = candidate.path
        return path.suffix == ".gguf" or (path.is_dir() and (path / FILENAME).is_file())

    def read_raw(self, candidate: Candidate) -> Raw:
        """Tensors (dequantized to f32 where quantized) and the metadata of a GGUF file."""
        path = candidate.path / FILENAME if candidate.path.is_dir() else candidate.path

        def read(gguf, reader):
            tensors = {name: torch.from_numpy(array)
                       for name, array in _tensors(gguf, reader).items()}
            return _config(_fields(gguf, reader, path), path), tensors, reader

        config, tensors, reader = _read(path, read)
        rows = tensors["token_embd.weight"].shape[0] if "token_embd.weight" in tensors else 0
        # the tokenizer from the metadata parsed here: the gguf package parses a file's every
        # array value by value (a SentencePiece charsmap's 240,000 bytes take seconds)
        def vocabulary() -> Vocabulary | None:
            return _read(path, lambda gguf, parsed: read_tokenizer(
                gguf, parsed, _fields(gguf, parsed, path), path), reader)

        return Raw(str(path), tensors, config, extra={"vocab_size": rows}, vocabulary=vocabulary)

    def tokenizer_refusal(self, vocabulary: Vocabulary | None) -> str | None:
        """llama.cpp refuses a GGUF without a tokenizer; it holds a byte-level BPE with GPT-2's
        pre-tokenizer, BERT's WordPiece and a SentencePiece unigram model as their own libraries
        encode."""
        if vocabulary is None:
            return ("the checkpoint has no tokenizer, and llama.cpp refuses a GGUF without one "
                    "(key not found in model: tokenizer.ggml.model)")
        if vocabulary.kind == "wordpiece" and not vocabulary.settings().get(
                "tokenize_chinese_chars", True):
            return ("its WordPiece keeps Chinese characters together (tokenize_chinese_chars "
                    "false), and llama.cpp's splits them: it would encode differently")
        if vocabulary.kind == "sentencepiece" and (
                sentencepiece_model(vocabulary).trainer_spec.model_type != UNIGRAM):
            return ("its SentencePiece model is not a unigram one, which gpt2port does not "
                    "write into GGUF: llama.cpp would encode differently")
        if vocabulary.kind not in ("bpe", "wordpiece", "sentencepiece"):
            return (f"its tokenizer is {KINDS[vocabulary.kind]}, which gpt2port does not write "
                    "into GGUF: llama.cpp would encode differently")
        return None

    def read_vocabulary(self, path: Path) -> Vocabulary | None:
        path = path / FILENAME if path.is_dir() else path
        return _read(path, lambda gguf, reader: read_tokenizer(
            gguf, reader, _fields(gguf, reader, path), path))

    def write_tokenizer(self, vocabulary: Vocabulary, folder: Path, config: dict) -> None:
        """Nothing beside the file: the tokenizer is inside it."""

    def write_raw(self, destination: Path, tensors, config: dict, *, dtype: str | None,
                  vocabulary: Vocabulary | None) -> None:
        """One GGUF file (``model.gguf`` in a folder): 2-D weights in ``dtype`` (f32 by
        default), norms and biases in f32 as llama.cpp's converter writes them, and the tokenizer."""
        gguf = _gguf()
        path = destination / FILENAME if destination.is_dir() else destination
        dtype = dtype or "f32"
        writer = gguf.GGUFWriter(str(path), "gpt2")
        writer.add_block_count(config["number_of_layers"])
        writer.add_context_length(config["context_length"])
        writer.add_embedding_length(config["embedding_dimension"])
        writer.add_feed_forward_length(feed_forward_width(config))
        writer.add_head_count(config["number_of_heads"])
        writer.add_layer_norm_eps(config["layer_norm_epsilon"])
        writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[dtype]))
        if vocabulary is not None:
            add_tokenizer(writer, gguf, vocabulary, config["padded_vocab_size"])
        # streamed: every tensor's info first (from the shapes), then each tensor made, encoded
        # and written in turn
        kind = getattr(gguf.GGMLQuantizationType, TENSOR_TYPES[dtype])
        encodings = {name: _encoding(shape, dtype) for name, shape in tensors.shapes.items()}
        for name, shape in tensors.shapes.items():
            stored = encodings[name]
            if stored == "quantized":
                byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, kind)
                writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8),
                                       int(np.prod(byte_shape)), raw_dtype=kind)
            else:
                writer.add_tensor_info(name, shape, np.dtype(stored),
                                       int(np.prod(shape)) * np.dtype(stored).itemsize)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        # each tensor written on another thread while the next is made and encoded
        with ThreadPoolExecutor(1) as behind:
            written = None
            for name, tensor in tensors.items():
                stored = encodings[name]
                if stored == "quantized":
                    array = _quantized(tensor, dtype, gguf)
                else:
                    array = tensor.to(TORCH_TYPES[stored]).contiguous().numpy()
                if written is not None:
                    written.result()
                written = behind.submit(writer.write_tensor_data, array)
            if written is not None:
                written.result()
        writer.close()

    def reference_tensors(self, path: Path) -> tuple[Arrays, dict]:
        """The file read from the GGUF specification with NumPy (``gguf_file``: no code shared
        with the gguf package the loader uses), llama.cpp's names back to GPT-2's by hand;
        [out, in] -> [in, out]."""
        path = path / FILENAME if path.is_dir() else path
        names = {"token_embd": "wte", "position_embd": "wpe", "output_norm": "ln_f",
                 "output": "lm_head", "attn_norm": "ln_1", "ffn_norm": "ln_2",
                 "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
                 "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
        metadata, tensors, shapes = gguf_file.read(path)
        arrays = {}
        for name, make in tensors.items():
            block, base, kind = re.fullmatch(r"(?:blk\.(\d+)\.)?(\w+)\.(\w+)", name).groups()
            theirs = f"h.{block}.{names[base]}" if block else names[base]
            transposed = kind == "weight" and base not in ("token_embd", "position_embd", "output")
            arrays[f"{theirs}.{kind}"] = (lambda make=make, transposed=transposed: make().T
                                          if transposed else make())  # [out, in] -> [in, out]
        values = {key.theirs: metadata[key.theirs] for key in CONFIG_TABLE.keys
                  if key.theirs in metadata}
        return Arrays(arrays), CONFIG_TABLE.to_model(values, origin=str(path), extra={
            "vocab_size": shapes["token_embd.weight"][0], "tie_output_head": False})
