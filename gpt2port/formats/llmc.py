"""llm.c's model file, as ``train_gpt2.py``'s ``write_model`` writes it and ``train_gpt2.c``
reads it.

A header of 256 little-endian int32 (magic 20240326, version 3 = fp32 or 5 = bf16,
max_seq_len, vocab_size, num_layers, num_heads, channels, padded_vocab_size), then the tensors
back to back, each kind stacked across all layers, ``nn.Linear`` [out, in]: wte (padded to
padded_vocab_size rows), wpe, ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb,
fcprojw, fcprojb, lnfw, lnfb. The head is tied to wte. The tokenizer is ``gpt2_tokenizer.bin``
(magic 20240328, version 2: count, end-of-text id, then each token's length byte and bytes).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np
import torch

from ..config import GPT2_VARIANT, LARGEST_SIZE
from ..errors import CheckpointError, ConfigError, unreadable
from ..io.arrays import Arrays
from ..io.writers import tensor_bytes
from ..text.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, byte_to_character
from ..text.vocabulary import Vocabulary, from_bpe, merges_from_tokens
from .base import Candidate, ConfigKey, ConfigTable, Format, Raw
from .table import MappingTable

MAGIC, TOKENIZER_MAGIC = 20240326, 20240328
VERSIONS = {3: torch.float32, 5: torch.bfloat16}  # version -> dtype of every tensor
DTYPE_VERSIONS = {"f32": 3, "bf16": 5}
HEADER_INTS = 256
FILENAME, TOKENIZER_FILENAME = "model.bin", "gpt2_tokenizer.bin"
WHOLE = ("wte", "wpe", "lnfw", "lnfb")  # the tensors that are not stacked across layers
TABLE = MappingTable.parse("llmc", """
    token_embedding_table.weight        wte
    position_embedding_table.weight     wpe
    attention_norm.scale                ln1w.{}
    attention_norm.shift                ln1b.{}
    attention.qkv.weight                qkvw.{}      split
    attention.qkv.bias                  qkvb.{}      split
    attention.output_projection.weight  attprojw.{}
    attention.output_projection.bias    attprojb.{}
    feed_forward_norm.scale             ln2w.{}
    feed_forward_norm.shift             ln2b.{}
    feed_forward.expansion.weight       fcw.{}
    feed_forward.expansion.bias         fcb.{}
    feed_forward.contraction.weight     fcprojw.{}
    feed_forward.contraction.bias       fcprojb.{}
    layer_norm.scale                    lnfw
    layer_norm.shift                    lnfb
    """)
# header[2:8], in order <-> model config key (all required)
CONFIG_TABLE = ConfigTable((
    ConfigKey("max_seq_len", "context_length"),  # header[2]
    ConfigKey("vocab_size", "vocab_size"),
    ConfigKey("num_layers", "number_of_layers"),
    ConfigKey("num_heads", "number_of_heads"),
    ConfigKey("channels", "embedding_dimension"),
    ConfigKey("padded_vocab_size", "padded_vocab_size"),
), assumes={**GPT2_VARIANT, "dropout_rate": 0.0, "layer_norm_epsilon": 1e-5,
            "qkv_bias": True, "bias": True, "gelu_approximation": "tanh"},
   derived={"tie_output_head": "always: the head is `wte`"})
FIELDS = tuple(key.theirs for key in CONFIG_TABLE.keys)


def tensor_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Each stacked tensor's name and shape, in the file's order (L = layers, C = channels)."""
    layers, channels = config["number_of_layers"], config["embedding_dimension"]
    return [("wte", (config["padded_vocab_size"], channels)),
            ("wpe", (config["context_length"], channels)),
            ("ln1w", (layers, channels)), ("ln1b", (layers, channels)),
            ("qkvw", (layers, 3 * channels, channels)), ("qkvb", (layers, 3 * channels)),
            ("attprojw", (layers, channels, channels)), ("attprojb", (layers, channels)),
            ("ln2w", (layers, channels)), ("ln2b", (layers, channels)),
            ("fcw", (layers, 4 * channels, channels)), ("fcb", (layers, 4 * channels)),
            ("fcprojw", (layers, channels, 4 * channels)), ("fcprojb", (layers, channels)),
            ("lnfw", (channels,)), ("lnfb", (channels,))]


def read_header(path: Path, data: bytes) -> tuple[dict, torch.dtype]:
    """The header's config fields (``FIELDS``, by name) and the tensors' dtype.

    Raises:
        CheckpointError: naming the field that is wrong.
    """
    if len(data) < 4 * HEADER_INTS:
        raise CheckpointError(f"{path}: {len(data)} bytes is too short for llm.c's header "
                              f"({4 * HEADER_INTS} bytes)", hint="the file is truncated")
    header = struct.unpack(f"<{HEADER_INTS}i", data[:4 * HEADER_INTS])
    if header[0] != MAGIC:
        raise CheckpointError(f"{path}: magic {header[0]} is not llm.c's model magic {MAGIC}")
    if header[1] not in VERSIONS:
        raise CheckpointError(f"{path}: llm.c model version {header[1]} is not one this reader "
                              f"knows ({', '.join(map(str, VERSIONS))})",
                              hint="re-export it with llm.c's current train_gpt2.py")
    fields = dict(zip(FIELDS, header[2:2 + len(FIELDS)], strict=True))
    bad = [f"{name}={value}" for name, value in fields.items() if not 0 < value <= LARGEST_SIZE]
    if bad:
        raise CheckpointError(f"{path}: header fields out of range: {', '.join(bad)}")
    return fields, VERSIONS[header[1]]


def header_config(path: Path, fields: dict) -> dict:
    """The model config of the header's fields (llm.c always ties the head).

    Raises:
        CheckpointError: for fields no model can have.
    """
    try:
        return CONFIG_TABLE.to_model(fields, origin=f"{path}: header",
                                     extra={"tie_output_head": True})
    except ConfigError as error:
        raise CheckpointError(error.message) from None


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Per-layer views of the memory-mapped file (``qkvw.3`` is layer 3's slice), and the
    header's fields.

    Raises:
        CheckpointError: for a bad header or a file whose size does not fit it.
    """
    try:
        with open(path, "rb") as file:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as error:
        raise unreadable(path, error) from None
    fields, dtype = read_header(path, mapped[:4 * HEADER_INTS])
    config = header_config(path, fields)
    shapes = tensor_shapes(config)
    needed = 4 * HEADER_INTS + sum(int(np.prod(shape)) for _, shape in shapes) * dtype.itemsize
    if len(mapped) != needed:
        raise CheckpointError(f"{path}: the header describes {needed:,} bytes, the file has "
                              f"{len(mapped):,}", hint="the file is truncated or damaged")
    tensors, offset = {}, 4 * HEADER_INTS
    for name, shape in shapes:
        count = int(np.prod(shape))
        stacked = torch.frombuffer(mapped, dtype=dtype, count=count, offset=offset).view(shape)
        offset += count * dtype.itemsize
        if name in WHOLE:
            tensors[name] = stacked
        else:
            tensors.update({f"{name}.{i}": stacked[i] for i in range(shape[0])})
    return tensors, fields


def write_tokenizer(vocabulary: Vocabulary, path: Path) -> None:
    """``gpt2_tokenizer.bin`` (version 2): each token's bytes (an added token's text as UTF-8),
    the end-of-text id in the header, as llm.c's ``tokenizer_init`` reads it."""
    eot = vocabulary.roles.get("eos", END_OF_TEXT_ID)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:4] = (TOKENIZER_MAGIC, 2, len(vocabulary), eot)
    with open(path, "wb") as file:
        file.write(header.tobytes())
        for token in range(len(vocabulary)):
            data = vocabulary.token_bytes(token)
            file.write(struct.pack("<B", len(data)) + data)


def read_tokenizer(path: Path) -> Vocabulary:
    """``gpt2_tokenizer.bin`` back to a Vocabulary: the merges rebuilt from the tokens' order
    (the file holds none), tokens no merges build taken as added text.

    Raises:
        CheckpointError: for another magic, a size that does not match, or a token that
            runs past the end.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise unreadable(path, error, CheckpointError) from None
    header = np.frombuffer(data[:HEADER_INTS * 4], dtype="<i4") if (
        len(data) >= HEADER_INTS * 4) else np.zeros(1, dtype="<i4")
    if len(header) < 4 or header[0] != TOKENIZER_MAGIC or header[1] not in (1, 2):
        raise CheckpointError(f"{path}: not llm.c's tokenizer file (magic {TOKENIZER_MAGIC}, "
                              "version 1 or 2)", hint="write it again with gpt2port convert")
    size, offset, tokens = int(header[2]), HEADER_INTS * 4, []
    eot = int(header[3]) if header[1] == 2 else END_OF_TEXT_ID
    for _ in range(size):
        length = data[offset] if offset < len(data) else None
        if length is None or offset + 1 + length > len(data):
            raise CheckpointError(f"{path}: token {len(tokens)} runs past the end of the file",
                                  hint="the file is truncated; write it again")
        tokens.append(data[offset + 1:offset + 1 + length])
        offset += 1 + length
    if offset != len(data):
        raise CheckpointError(f"{path}: {len(data) - offset} bytes after the {size} tokens its "
                              "header counts", hint="the file is damaged; write it again")
    ranks = {token: i for i, token in enumerate(tokens) if i != eot}
    merges = merges_from_tokens(ranks)
    to_char = byte_to_character()
    names = {i: "".join(to_char[b] for b in token) for i, token in enumerate(tokens)}
    added = {i: (tokens[i].decode(errors="replace"), False)
             for i in range(256 + len(merges), size) if i != eot}
    vocab = {names[i]: i for i in range(size) if i not in added and i != eot}
    vocab[END_OF_TEXT] = eot
    return from_bpe(vocab, merges, added, {"bos": eot, "eos": eot}, str(path))


class LlmC(Format):
    name = "llmc"
    name_table = TABLE
    reference_reads_with = "NumPy on the raw bytes"
    config_table = CONFIG_TABLE
    title = "llm.c's model file"
    summary = f"`{FILENAME}` (header + stacked tensors) and `{TOKENIZER_FILENAME}`"
    dtypes = tuple(DTYPE_VERSIONS)
    head = "tied"
    cannot_represent = ("an untied head, an epsilon other than 1e-5 (refused); the exact GELU "
                        "(refused unless approximated); no biases (zeros: exact); dropout "
                        "(llm.c trains without it); f16")
    proof = ("a reader written from llm.c's documented layout (as `train_gpt2.c` reads it) gives "
             "logits equal to transformers'")
    tokenizer = (f"`{TOKENIZER_FILENAME}`: every token's bytes, added tokens included; the "
                 "merges are rebuilt from the tokens' order on reading; special tokens other "
                 "than end-of-text are not marked (stated)")

    def model_file(self, candidate: Candidate) -> Path | None:
        """The path itself, or a ``.bin`` in a folder, when it starts with llm.c's magic."""
        files = [candidate] if candidate.path.is_file() else [
            candidate.inside(path.name) for path in sorted(candidate.path.glob("*.bin"))]
        return next((each.path for each in files
                     if each.magic[:4] == struct.pack("<i", MAGIC)), None)

    def recognises(self, candidate: Candidate) -> bool:
        return self.model_file(candidate) is not None

    def read_raw(self, candidate: Candidate) -> Raw:
        path = self.model_file(candidate)
        tensors, fields = read_tensors(path)
        return Raw(str(path), tensors, fields)

    def writing_dtype(self, dtype: str | None, model) -> str:
        """f32 unless bf16 is asked for or the model is bf16 (llm.c has no f16)."""
        if dtype is None:
            return "bf16" if model.token_embedding_table.weight.dtype == torch.bfloat16 else "f32"
        return dtype

    def write_raw(self, destination: Path, tensors, config: dict, *, dtype: str | None,
                  vocabulary: Vocabulary | None) -> None:
        """``model.bin`` (version 3 for f32, 5 for bf16), each tensor written as it comes: the
        table's order is the file's, each kind's layers back to back."""
        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[:2] = (MAGIC, DTYPE_VERSIONS[dtype])
        fields = CONFIG_TABLE.from_model(config)
        header[2:2 + len(FIELDS)] = [fields[name] for name in FIELDS]
        order = [name if name in WHOLE else f"{name}.{layer}"
                 for name, shape in tensor_shapes(config)
                 for layer in ([None] if name in WHOLE else range(shape[0]))]
        with open(destination / FILENAME, "wb") as file:
            file.write(header.tobytes())
            file.writelines(tensor_bytes(tensors[name]) for name in order)

    def keeps_tokenizer(self, vocabulary: Vocabulary) -> bool:
        """llm.c keeps the tokens alone: the merges are rebuilt from GPT-2's layout."""
        return vocabulary.is_gpt2_bpe

    def tokenizer_losses(self, vocabulary: Vocabulary) -> list[str]:
        special = [vocabulary.tokens[i] for i in vocabulary.extra if i in vocabulary.special]
        losses = []
        if special:
            losses.append(f"{TOKENIZER_FILENAME} keeps {', '.join(special)} as added tokens, "
                          "not marked special")
        if "pad" in vocabulary.roles:
            losses.append(f"{TOKENIZER_FILENAME} has no padding id (was "
                          f"{vocabulary.roles['pad']})")
        return losses

    def write_tokenizer(self, vocabulary: Vocabulary, folder: Path, config: dict) -> None:
        write_tokenizer(vocabulary, folder / TOKENIZER_FILENAME)

    def read_vocabulary(self, path: Path) -> Vocabulary | None:
        found = (path if path.is_dir() else path.parent) / TOKENIZER_FILENAME
        return read_tokenizer(found) if found.is_file() else super().read_vocabulary(path)

    def reference_tensors(self, path: Path) -> tuple[Arrays, dict]:
        """The file read afresh with NumPy (mapped, each tensor decoded when needed), llm.c's
        stacked names mapped to GPT-2's by hand."""
        path = self.model_file(Candidate(path))
        data = np.memmap(path, dtype=np.uint8, mode="r")
        fields, dtype = read_header(path, bytes(data[:4 * HEADER_INTS]))
        config = header_config(path, fields)
        bf16 = dtype == torch.bfloat16

        def values(offset: int, shape: tuple[int, ...], layer: int | None = None):
            def make() -> np.ndarray:
                raw = np.frombuffer(data, "<u2" if bf16 else "<f4", count=int(np.prod(shape)),
                                    offset=4 * HEADER_INTS + offset * (2 if bf16 else 4))
                raw = raw.reshape(shape) if layer is None else raw.reshape(shape)[layer].T
                return (raw.astype(np.uint32) << 16).view(np.float32) if bf16 else raw
            return make  # a layer's [out, in] as [in, out]

        gpt2 = {"ln1w": "ln_1.weight", "ln1b": "ln_1.bias", "qkvw": "attn.c_attn.weight",
                "qkvb": "attn.c_attn.bias", "attprojw": "attn.c_proj.weight",
                "attprojb": "attn.c_proj.bias", "ln2w": "ln_2.weight", "ln2b": "ln_2.bias",
                "fcw": "mlp.c_fc.weight", "fcb": "mlp.c_fc.bias",
                "fcprojw": "mlp.c_proj.weight", "fcprojb": "mlp.c_proj.bias"}
        arrays, offset = {}, 0
        for name, shape in tensor_shapes(config):
            if name in gpt2:
                for layer in range(shape[0]):
                    arrays[f"h.{layer}.{gpt2[name]}"] = values(offset, shape, layer)
            else:
                arrays[{"wte": "wte.weight", "wpe": "wpe.weight", "lnfw": "ln_f.weight",
                        "lnfb": "ln_f.bias"}[name]] = values(offset, shape)
            offset += int(np.prod(shape))
        return Arrays(arrays), config
