"""llama.cpp's GGUF for arch ``gpt2``: tensor names, metadata keys and tokenizer, via the ``gguf``
package (an optional dependency: ``pip install gpt2port[gguf]``).

Weights are stored as ``nn.Linear`` stores them, [out, in]; ``attn_qkv`` packs q|k|v.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..config import GPT2_VARIANT, feed_forward_width
from ..errors import CheckpointError, TokenizerError
from ..io import gguf_file
from ..io.arrays import Arrays
from ..text.tokenizer import END_OF_TEXT
from ..text.vocabulary import (
    KINDS,
    SENTENCEPIECE_FILES,
    T5_CLASSES,
    Vocabulary,
    from_bpe,
    wordpiece_files,
)
from .base import Candidate, ConfigKey, ConfigTable, Format, Raw
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


UNIGRAM = 1  # sentencepiece's TrainerSpec.model_type of a unigram model (llama.cpp's "t5")
PHANTOM_SPACE = "\u2581"  # llama.cpp's WordPiece marks a word's first piece with it, not "##"


def _add_tokenizer(writer, gguf, vocabulary: Vocabulary, rows: int) -> None:
    """Every token, its type (control for special tokens, user-defined for added ones) and the
    role ids as llama.cpp's converter writes them: a byte-level BPE as model ``gpt2`` with its
    merges and GPT-2's pre-tokenizer; WordPiece as model ``bert``, each word's first piece marked
    with a phantom space instead of the others' ``##``, with BERT's normalizer options. Rows the
    tokenizer does not cover (a padded vocabulary) get ``[PAD<id>]`` tokens of type unused."""
    types = [gguf.TokenType.CONTROL if i in vocabulary.special else
             gguf.TokenType.USER_DEFINED if i in vocabulary.added else gguf.TokenType.NORMAL
             for i in range(len(vocabulary))]
    padding = range(len(vocabulary), rows)
    tokens = list(vocabulary.tokens)
    roles = dict(vocabulary.roles)
    if vocabulary.kind == "sentencepiece":
        _add_sentencepiece(writer, gguf, vocabulary, rows)
        return
    if vocabulary.kind == "wordpiece":
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre("default")
        tokens = [token if kind == gguf.TokenType.CONTROL else token.removeprefix("##")
                  if token.startswith("##") else PHANTOM_SPACE + token
                  for token, kind in zip(tokens, types, strict=True)]
        lowercase, strip_accents = wordpiece_normalizer(vocabulary)
        # (keys llama.cpp reads; older gguf packages have no methods for them)
        writer.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)
        writer.add_bool("tokenizer.ggml.normalizer.strip_accents", strip_accents)
        roles.pop("eos", None)  # BERT has none: llama.cpp warns of an end token it does not know
        if "cls" in roles:  # BERT's text starts with [CLS] and ends with [SEP]
            roles["bos"] = roles["cls"]
            writer.add_bool("tokenizer.ggml.add_bos_token", True)
            writer.add_bool("tokenizer.ggml.add_sep_token", "sep" in roles)
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list([*tokens, *(f"[PAD{i}]" for i in padding)])
    writer.add_token_types([*types, *(gguf.TokenType.UNUSED for _ in padding)])
    if vocabulary.kind == "bpe":
        writer.add_token_merges(list(vocabulary.merges))
    added = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
             "pad": writer.add_pad_token_id, "unk": writer.add_unk_token_id,
             "sep": writer.add_sep_token_id, "mask": writer.add_mask_token_id}
    for role, add in added.items():
        if role in roles:
            add(roles[role])


def _sentencepiece_model(vocabulary: Vocabulary):
    """The SentencePiece model a vocabulary was read from (sentencepiece's protobuf message).

    Raises:
        TokenizerError: without the sentencepiece package (and protobuf), or a damaged model.
    """
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise TokenizerError("writing a SentencePiece tokenizer into GGUF needs the "
                             "sentencepiece and protobuf packages",
                             hint="pip install 'gpt2port[tokenizers]'") from None
    found = next((vocabulary.file(name) for name in SENTENCEPIECE_FILES
                  if vocabulary.file(name)), None)
    model = sentencepiece_model_pb2.ModelProto()
    try:
        model.ParseFromString(found or b"")
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and others
        raise TokenizerError(f"the SentencePiece model cannot be read ({error})",
                             hint="the tokenizer files are damaged; use the model's own") from None
    return model


def _add_sentencepiece(writer, gguf, vocabulary: Vocabulary, rows: int) -> None:
    """A SentencePiece unigram model as llama.cpp's converter writes T5's: model ``t5`` (its
    unigram tokenizer), every piece with its score and type (the two number types alike), the
    normalizer's precompiled charsmap, the dummy-prefix and whitespace flags, the role ids; T5's
    tokenizer ends a text with ``</s>``."""
    model = _sentencepiece_model(vocabulary)
    pieces = list(model.pieces)
    extra = range(len(pieces), len(vocabulary))  # tokens added past the model's own
    padding = range(len(vocabulary), rows)
    writer.add_tokenizer_model("t5")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([*(piece.piece for piece in pieces),
                           *(vocabulary.tokens[i] for i in extra),
                           *(f"[PAD{i}]" for i in padding)])
    writer.add_token_scores([*(piece.score for piece in pieces),
                             *(-1000.0 for _ in (*extra, *padding))])
    writer.add_token_types([*(piece.type for piece in pieces), *(
        gguf.TokenType.CONTROL if i in vocabulary.special else gguf.TokenType.USER_DEFINED
        for i in extra), *(gguf.TokenType.UNUSED for _ in padding)])
    normalizer = model.normalizer_spec
    writer.add_add_space_prefix(normalizer.add_dummy_prefix)
    writer.add_remove_extra_whitespaces(normalizer.remove_extra_whitespaces)
    if normalizer.precompiled_charsmap:
        writer.add_precompiled_charsmap(normalizer.precompiled_charsmap)
    ends_with_eos = vocabulary.settings().get("tokenizer_class") in T5_CLASSES
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_bool("tokenizer.ggml.add_eos_token", ends_with_eos)
    added = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
             "pad": writer.add_pad_token_id, "unk": writer.add_unk_token_id}
    for role, add in added.items():
        if role in vocabulary.roles:
            add(vocabulary.roles[role])


def wordpiece_normalizer(vocabulary: Vocabulary) -> tuple[bool, bool]:
    """(lowercase, strip accents) as transformers' BertTokenizer reads tokenizer_config.json:
    lowercasing strips accents too unless ``strip_accents`` says otherwise."""
    settings = vocabulary.settings()
    lowercase = bool(settings.get("do_lower_case", True))
    strip = settings.get("strip_accents")
    return lowercase, bool(lowercase if strip is None else strip)


def _vocabulary(gguf, reader, path: Path) -> Vocabulary | None:
    """The tokenizer a GGUF file holds (None: none), tokens of type unused left out."""
    fields = reader.fields
    if "tokenizer.ggml.tokens" not in fields:
        return None
    values = _fields(gguf, reader, path)
    model = values.get("tokenizer.ggml.model")
    if model not in ("gpt2", "bert", "t5"):
        raise CheckpointError(f"{path}: the GGUF tokenizer is llama.cpp's {model!r}; gpt2port "
                              "reads its 'gpt2' (byte-level BPE), 'bert' (WordPiece) and 't5' "
                              "(SentencePiece unigram) ones",
                              hint="pass the model's tokenizer with --tokenizer PATH|REPO")

    def array(key: str) -> list:
        found = fields.get(key)
        return [] if found is None else [found.parts[i] for i in found.data]

    tokens = [bytes(part).decode(errors="replace") for part in array("tokenizer.ggml.tokens")]
    types = [int(part[0]) for part in array("tokenizer.ggml.token_type")] or [
        gguf.TokenType.NORMAL] * len(tokens)
    merges = [bytes(part).decode(errors="replace") for part in array("tokenizer.ggml.merges")]
    roles = {role: values[f"tokenizer.ggml.{key}_token_id"]
             for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"),
                               ("unk", "unknown"), ("sep", "seperator"), ("mask", "mask"))
             if f"tokenizer.ggml.{key}_token_id" in values}
    if model == "bert":
        return _wordpiece(gguf, tokens, types, roles, values)
    if model == "t5":
        scores = [float(part[0]) for part in array("tokenizer.ggml.scores")]
        charsmap = bytes(np.concatenate(array("tokenizer.ggml.precompiled_charsmap") or [
            np.zeros(0, np.uint8)]).astype(np.uint8))
        return _sentencepiece(gguf, tokens, scores, types, roles, values, charsmap)
    kept = [i for i, kind in enumerate(types) if kind != gguf.TokenType.UNUSED]
    added = {i: (tokens[i], types[i] == gguf.TokenType.CONTROL) for i in kept
             if types[i] in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)
             and tokens[i] != END_OF_TEXT}
    vocab = {tokens[i]: i for i in kept if i not in added}
    roles = {role: i for role, i in roles.items() if role in ("bos", "eos", "pad")}
    return from_bpe(vocab, merges, added, roles, str(path))


def _sentencepiece(gguf, tokens: list[str], scores: list[float], types: list[int],
                   roles: dict, values: dict, charsmap: bytes) -> Vocabulary:
    """llama.cpp's ``t5`` tokenizer back as the SentencePiece unigram model it was written from
    (``spiece.model``, with transformers' ``T5Tokenizer`` in tokenizer_config.json: its class
    for a unigram model), rows of type unused left out.

    Raises:
        TokenizerError: without the sentencepiece package (and protobuf).
    """
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise TokenizerError("reading a GGUF's SentencePiece tokenizer needs the sentencepiece "
                             "and protobuf packages",
                             hint="pip install 'gpt2port[tokenizers]'") from None
    kept = [i for i, kind in enumerate(types) if kind != gguf.TokenType.UNUSED]
    model = sentencepiece_model_pb2.ModelProto()
    model.trainer_spec.model_type = UNIGRAM
    for i in kept:
        model.pieces.add(piece=tokens[i], score=scores[i] if i < len(scores) else 0.0,
                         type=types[i])
    model.trainer_spec.unk_id = roles.get("unk", 0)
    model.normalizer_spec.name = "nmt_nfkc"
    model.normalizer_spec.precompiled_charsmap = charsmap
    model.normalizer_spec.add_dummy_prefix = bool(values.get("tokenizer.ggml.add_space_prefix",
                                                             True))
    model.normalizer_spec.remove_extra_whitespaces = bool(values.get(
        "tokenizer.ggml.remove_extra_whitespaces", True))
    special = frozenset(i for i in kept if types[i] in (gguf.TokenType.CONTROL,
                                                        gguf.TokenType.UNKNOWN))
    roles = {role: i for role, i in roles.items() if role in ("bos", "eos", "pad", "unk")}
    settings = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0,  # transformers' unigram one
                **{f"{role}_token": tokens[i] for role, i in roles.items()}}
    files = (("spiece.model", model.SerializeToString()),
             ("tokenizer_config.json", json.dumps(settings, ensure_ascii=False).encode()))
    return Vocabulary(tuple(tokens[i] for i in kept), (), special, special, roles,
                      "sentencepiece", files=files)


def _wordpiece(gguf, tokens: list[str], types: list[int], roles: dict, values: dict
               ) -> Vocabulary:
    """llama.cpp's ``bert`` tokens back in WordPiece's spelling (``##`` on continuing pieces),
    with transformers' files made from them; its start token is BERT's [CLS]."""
    kept = [i for i, kind in enumerate(types) if kind != gguf.TokenType.UNUSED]
    spelled = tuple(tokens[i] if types[i] == gguf.TokenType.CONTROL else
                    tokens[i].removeprefix(PHANTOM_SPACE) if tokens[i].startswith(PHANTOM_SPACE)
                    else "##" + tokens[i] for i in kept)
    special = frozenset(i for i in kept if types[i] == gguf.TokenType.CONTROL)
    roles = {("cls" if role == "bos" else role): i for role, i in roles.items()
             if role != "eos" or i != roles.get("sep")}
    vocabulary = Vocabulary(spelled, (), special, special, roles, "wordpiece")
    normalizer = {key: bool(values.get(f"tokenizer.ggml.normalizer.{key}", True))
                  for key in ("lowercase", "strip_accents")}
    return replace(vocabulary, files=wordpiece_files(vocabulary, **normalizer))


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
            return _read(path, lambda gguf, parsed: _vocabulary(gguf, parsed, path), reader)

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
                _sentencepiece_model(vocabulary).trainer_spec.model_type != UNIGRAM):
            return ("its SentencePiece model is not a unigram one, which gpt2port does not "
                    "write into GGUF: llama.cpp would encode differently")
        if vocabulary.kind not in ("bpe", "wordpiece", "sentencepiece"):
            return (f"its tokenizer is {KINDS[vocabulary.kind]}, which gpt2port does not write "
                    "into GGUF: llama.cpp would encode differently")
        return None

    def read_vocabulary(self, path: Path) -> Vocabulary | None:
        path = path / FILENAME if path.is_dir() else path
        return _read(path, lambda gguf, reader: _vocabulary(gguf, reader, path))

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
            _add_tokenizer(writer, gguf, vocabulary, config["padded_vocab_size"])
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
