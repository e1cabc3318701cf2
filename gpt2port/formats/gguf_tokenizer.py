"""llama.cpp's tokenizer models inside a GGUF, written and read as its converter and its loader
do: a byte-level BPE as ``gpt2`` (with GPT-2's pre-tokenizer), BERT's WordPiece as ``bert``, a
SentencePiece unigram model as ``t5``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, TokenizerError
from ..text.tokenizer import END_OF_TEXT
from ..text.vocabulary import (
    SENTENCEPIECE_FILES,
    T5_CLASSES,
    Vocabulary,
    from_bpe,
    wordpiece_files,
)

UNIGRAM = 1  # sentencepiece's TrainerSpec.model_type of a unigram model (llama.cpp's "t5")
PHANTOM_SPACE = "\u2581"  # llama.cpp's WordPiece marks a word's first piece with it, not "##"


def add_tokenizer(writer, gguf, vocabulary: Vocabulary, rows: int) -> None:
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


def sentencepiece_model(vocabulary: Vocabulary):
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
    model = sentencepiece_model(vocabulary)
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


def read_tokenizer(gguf, reader, values: dict, path: Path) -> Vocabulary | None:
    """The tokenizer a GGUF file holds (None: none), tokens of type unused left out; ``values``:
    its scalar metadata.

    Raises:
        CheckpointError: for a tokenizer model gpt2port does not read.
        TokenizerError: for a SentencePiece one without the sentencepiece package.
    """
    fields = reader.fields
    if "tokenizer.ggml.tokens" not in fields:
        return None
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
