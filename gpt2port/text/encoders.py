"""A checkpoint's tokenizer as one object (``Tokenizer``): text -> ids -> text, and its special
ids, whatever kind it is.

GPT-2's byte-level BPE in GPT-2's layout runs in tiktoken (built in, fast). Every other kind runs
in the library that defines it, an optional extra (``pip install 'gpt2port[tokenizers]'``): a
``tokenizer.json``, a byte-level BPE of another layout and WordPiece in Hugging Face's
``tokenizers``; a SentencePiece model in ``sentencepiece``. Each encodes as transformers'
``AutoTokenizer`` does on the same files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from ..errors import TokenizerError
from .tokenizer import encoding
from .vocabulary import KINDS, SENTENCEPIECE_FILES, T5_CLASSES, TOKENIZER_JSON, Vocabulary

EXTRA_HINT = "pip install 'gpt2port[tokenizers]'"
DAMAGED = "the tokenizer files are damaged; use the model's own"


class Tokenizer:
    """``encode(text)`` -> ids, ``decode(ids)`` -> text, the special tokens' ids by role
    (``bos_token_id``, ``eos_token_id``, ``pad_token_id``...) and ``vocabulary``, the tokens;
    ``encoding``: the tiktoken ``Encoding`` where tiktoken runs it, else None."""

    def __init__(self, vocabulary: Vocabulary, encode: Callable[[str, bool], list[int]],
                 decode: Callable[[list[int]], str], runs_in: str, encoding=None):
        self.vocabulary, self.encoding = vocabulary, encoding
        self._encode, self._decode = encode, decode
        self.runs_in = runs_in  # the library that encodes, in words

    @property
    def kind(self) -> str:
        """What kind of tokenizer it is, in words."""
        return KINDS[self.vocabulary.kind]

    @property
    def n_vocab(self) -> int:
        return len(self.vocabulary)

    def __getattr__(self, name: str) -> int | None:
        """``bos_token_id``, ``eos_token_id``, ``pad_token_id``, ``unk_token_id``...: the id of
        that role, None where the tokenizer has none."""
        role = name.removesuffix("_token_id")
        if name.endswith("_token_id") and role.isalpha():
            return self.vocabulary.roles.get(role)
        raise AttributeError(name)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """``text``'s ids; special and added tokens written in the text are matched, as
        transformers does. ``add_special_tokens`` adds what the tokenizer wraps a text in
        (BERT's ``[CLS]``/``[SEP]``, T5's ``</s>``; nothing for GPT-2's).

        Raises:
            TokenizerError: for a text that is not a string.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"text: a string is needed, got {type(text).__name__}")
        return self._encode(text, add_special_tokens)

    def decode(self, ids) -> str:
        """The text of ``ids`` (bytes that are not whole UTF-8 characters as U+FFFD).

        Raises:
            TokenizerError: for an id outside the vocabulary.
        """
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < len(self.vocabulary)]
        if bad:
            raise TokenizerError(f"id {bad[0]} is outside the tokenizer's {len(self.vocabulary)} "
                                 "tokens", hint="decode ids the model of this tokenizer gave")
        return self._decode(ids)

    def __repr__(self) -> str:
        return f"<Tokenizer {self.kind}, {self.n_vocab} tokens, run by {self.runs_in}>"


def tokenizer_for(vocabulary: Vocabulary, origin: str) -> Tokenizer:
    """The ``Tokenizer`` that encodes as ``vocabulary``'s own files do.

    Raises:
        TokenizerError: when the files disagree, or the library its kind needs is missing.
    """
    if vocabulary.is_gpt2_bpe and _plain_byte_level(vocabulary.file(TOKENIZER_JSON)):
        return _tiktoken(vocabulary, origin)
    if vocabulary.kind == "sentencepiece":
        return _sentencepiece(vocabulary, origin)
    return _hugging_face(vocabulary, origin)


def _plain_byte_level(found: bytes | None) -> bool:
    """Whether a tokenizer.json (None: there is none) runs GPT-2's byte-level BPE as GPT-2's
    does: no normalizer, no template that adds tokens."""
    if found is None:
        return True
    try:
        tokenizer = json.loads(found)
    except (ValueError, UnicodeDecodeError):
        return False
    post = tokenizer.get("post_processor") if isinstance(tokenizer, dict) else None
    return (isinstance(tokenizer, dict) and not tokenizer.get("normalizer")
            and (post is None or (isinstance(post, dict) and post.get("type") == "ByteLevel")))


def _tiktoken(vocabulary: Vocabulary, origin: str) -> Tokenizer:
    found = encoding(vocabulary, origin)

    def encode(text: str, wrapped: bool) -> list[int]:
        return found.encode(text, allowed_special="all")

    def decode(ids: list[int]) -> str:
        return found.decode(ids)

    return Tokenizer(vocabulary, encode, decode, "tiktoken", found)


def _missing(name: str, vocabulary: Vocabulary, origin: str) -> TokenizerError:
    return TokenizerError(f"{origin}: its tokenizer is {KINDS[vocabulary.kind]}, which needs the "
                          f"{name} package", hint=EXTRA_HINT)


def _hugging_face(vocabulary: Vocabulary, origin: str) -> Tokenizer:
    """A tokenizer.json as it is, or a byte-level BPE or WordPiece built from its files as
    transformers' converters build them."""
    try:
        import tokenizers
    except ImportError:
        raise _missing("tokenizers", vocabulary, origin) from None
    try:
        if vocabulary.file(TOKENIZER_JSON):
            found = tokenizers.Tokenizer.from_str(vocabulary.file(TOKENIZER_JSON).decode())
        elif vocabulary.kind == "wordpiece":
            found = _wordpiece(tokenizers, vocabulary)
        else:
            found = _byte_level_bpe(tokenizers, vocabulary)
    except Exception as error:  # noqa: BLE001 - tokenizers raises its own exception types
        raise TokenizerError(f"{origin}: the tokenizers library cannot build its tokenizer "
                             f"({str(error)[:200]})", hint=DAMAGED) from None
    # special tokens are matched whole in a text (BERT's [UNK], [SEP] are vocabulary tokens)
    found.add_special_tokens([vocabulary.tokens[i] for i in sorted(vocabulary.special)])
    found.add_tokens([tokenizers.AddedToken(vocabulary.tokens[i], normalized=True)
                      for i in sorted(vocabulary.added - vocabulary.special)
                      if found.token_to_id(vocabulary.tokens[i]) is None])

    def encode(text: str, wrapped: bool) -> list[int]:
        try:
            return found.encode(text, add_special_tokens=wrapped).ids
        except Exception as error:  # noqa: BLE001 - tokenizers raises its own exception types
            raise TokenizerError(f"{origin}: the tokenizer cannot encode the text "
                                 f"({str(error)[:200]})", hint=DAMAGED) from None

    def decode(ids: list[int]) -> str:
        return found.decode(ids, skip_special_tokens=False)

    return Tokenizer(vocabulary, encode, decode, "tokenizers")


def _byte_level_bpe(tokenizers, vocabulary: Vocabulary):
    """A byte-level BPE from its tokens and merges, as transformers' GPT-2 converter builds it."""
    vocab = {token: i for i, token in enumerate(vocabulary.tokens)}  # added ones keep their ids
    merges = [tuple(merge.split(" ")) for merge in vocabulary.merges]
    found = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges, fuse_unk=False))
    found.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    found.decoder = tokenizers.decoders.ByteLevel()
    found.post_processor = tokenizers.processors.ByteLevel(trim_offsets=False)
    return found


def _wordpiece(tokenizers, vocabulary: Vocabulary):
    """BERT's WordPiece from vocab.txt and tokenizer_config.json, as transformers' BERT converter
    builds it."""
    settings, roles = vocabulary.settings(), vocabulary.roles
    vocab = {token: i for i, token in enumerate(vocabulary.tokens)}
    unk = vocabulary.tokens[roles["unk"]] if "unk" in roles else "[UNK]"
    if unk not in vocab:
        raise ValueError(f"its unknown token {unk!r} is not in vocab.txt")
    found = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token=unk))
    found.normalizer = tokenizers.normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        strip_accents=settings.get("strip_accents"),
        lowercase=settings.get("do_lower_case", True))
    found.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    found.decoder = tokenizers.decoders.WordPiece(prefix="##")
    if "cls" in roles and "sep" in roles:
        cls, sep = vocabulary.tokens[roles["cls"]], vocabulary.tokens[roles["sep"]]
        found.post_processor = tokenizers.processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, roles["cls"]), (sep, roles["sep"])])
    return found


def _sentencepiece(vocabulary: Vocabulary, origin: str) -> Tokenizer:
    """A SentencePiece model in the sentencepiece package; added and special tokens written in a
    text are matched first, as transformers does; T5's tokenizer ends a text with ``</s>``."""
    try:
        import sentencepiece
    except ImportError:
        raise _missing("sentencepiece", vocabulary, origin) from None
    model = next(vocabulary.file(name) for name in SENTENCEPIECE_FILES if vocabulary.file(name))
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model)
    except (RuntimeError, UnicodeDecodeError) as error:
        raise TokenizerError(f"{origin}: sentencepiece cannot read its model "
                             f"({str(error)[:200]})", hint=DAMAGED) from None
    whole = {vocabulary.tokens[i]: i for i in vocabulary.added | vocabulary.special}
    special_ids = set(whole.values())
    pattern = re.compile("|".join(map(re.escape, sorted(whole, key=len, reverse=True))) or "(?!)")
    ends_with_eos = vocabulary.settings().get("tokenizer_class") in T5_CLASSES

    def encode(text: str, wrapped: bool) -> list[int]:
        ids, start = [], 0
        for match in pattern.finditer(text):
            ids += processor.EncodeAsIds(text[start:match.start()]) if match.start() > start else []
            ids.append(whole[match.group()])
            start = match.end()
        ids += processor.EncodeAsIds(text[start:]) if start < len(text) else []
        eos = vocabulary.roles.get("eos")
        return ids + [eos] if wrapped and ends_with_eos and eos is not None else ids

    def text_of(run: list[int], first: bool) -> str:
        """A run of ordinary pieces; its word-start mark is a space but at the very start."""
        spaced = not first and processor.IdToPiece(run[0]).startswith("\u2581")
        return " " * spaced + processor.DecodeIds(run)

    def decode(ids: list[int]) -> str:
        parts, run = [], []
        for i in [*ids, None]:
            if i is not None and i not in special_ids:
                run.append(i)
                continue
            parts += [text_of(run, not parts)] if run else []
            parts += [vocabulary.tokens[i]] if i is not None else []
            run = []
        return "".join(parts)

    return Tokenizer(vocabulary, encode, decode, "sentencepiece")
