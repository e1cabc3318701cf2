"""GPT-2's tokenizer as a tiktoken ``Encoding``, built from local files with no network call."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

import tiktoken

from ..errors import TokenizerError, unreadable
from ..io.readers import read_json

END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256
# GPT-2's pre-tokenizer: contractions, letters, digits, punctuation runs, whitespace.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# (vocabulary, merges) file names: Hugging Face's, then OpenAI's release's (the same contents).
FILE_NAMES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
TOKENIZER_JSON = "tokenizer.json"  # the tokenizers library's one file (transformers 5 saves only it)
BUNDLED = resources.files("gpt2port") / "data"  # OpenAI's encoder.json and vocab.bpe, MIT


def byte_to_character() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte, as used in vocab.json and merges.txt."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    mapping = {byte: chr(byte) for byte in printable}
    mapping.update({byte: chr(256 + n) for n, byte in enumerate(others)})
    return mapping


@cache
def character_to_byte() -> dict[str, int]:
    """The byte each of GPT-2's printable stand-ins (``byte_to_character``) stands for."""
    return {char: byte for byte, char in byte_to_character().items()}


def mergeable_ranks(vocab: dict[str, int], merges: list[str], origin: str) -> dict[bytes, int]:
    """Token bytes -> rank from vocab.json, checked against the merge order of merges.txt.

    Raises:
        TokenizerError: when the two files do not describe the same tokenizer.
    """
    to_byte = character_to_byte()
    try:
        ranks = {bytes(to_byte[char] for char in token): rank
                 for token, rank in vocab.items() if token != END_OF_TEXT}
    except KeyError as error:
        raise TokenizerError(f"{origin}: vocab.json has a token with character {error} "
                             "outside GPT-2's byte alphabet") from None
    for line_number, line in enumerate(merges, start=256):
        parts = line.split(" ")
        merged = "".join(parts)
        if len(parts) != 2 or vocab.get(merged) != line_number:
            raise TokenizerError(f"{origin}: merge {line!r} should make token {line_number} "
                                 f"but vocab.json gives {merged!r} id {vocab.get(merged)}",
                                 hint="vocab.json and merges.txt must come from one tokenizer")
    return ranks


def tokenizer_files(folder: str | Path) -> tuple[Path, Path] | None:
    """The (vocabulary, merges) files in ``folder`` under either naming, or None."""
    for vocab, merges in FILE_NAMES:
        if (Path(folder) / vocab).is_file() and (Path(folder) / merges).is_file():
            return Path(folder) / vocab, Path(folder) / merges
    return None


def read_bpe(folder: str | Path) -> tuple[dict[str, int], list[str]] | None:
    """The vocabulary (token -> id) and merges (``"a b"`` lines) of ``folder``'s tokenizer:
    vocab.json + merges.txt, encoder.json + vocab.bpe, or the ``tokenizer.json`` alone that
    transformers 5 saves; None when it has none.

    Raises:
        TokenizerError: when the files cannot be read or are not a BPE tokenizer.
    """
    files = tokenizer_files(folder)
    if files is not None:
        vocab_path, merges_path = files
        try:
            text = merges_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise unreadable(merges_path, error, TokenizerError) from None
        return _vocab(read_json(vocab_path), vocab_path), [
            line for line in text.splitlines() if line and not line.startswith("#version")]
    path = Path(folder) / TOKENIZER_JSON
    if not path.is_file():
        return None
    found = read_json(path)
    model = found.get("model") if isinstance(found, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise TokenizerError(f"{path}: not a BPE tokenizer",
                             hint="GPT-2's tokenizer is byte-level BPE; use its own files")
    merges = model.get("merges")
    if not isinstance(merges, list):
        raise TokenizerError(f"{path}: model.merges is not a list")
    # tokenizers writes a merge as "a b", or from version 0.20 as ["a", "b"]
    lines = [" ".join(merge) if isinstance(merge, list) else merge for merge in merges]
    if not all(isinstance(line, str) for line in lines):
        raise TokenizerError(f"{path}: model.merges holds something other than token pairs")
    return _vocab(model.get("vocab"), path), lines


def _vocab(vocab: object, path: Path) -> dict[str, int]:
    if not (isinstance(vocab, dict) and all(type(i) is int for i in vocab.values())):
        raise TokenizerError(f"{path}: the vocabulary is not a token -> id mapping")
    return vocab


def write_bpe(vocab: dict[str, int], merges: list[str], folder: Path,
              names: tuple[str, str] = FILE_NAMES[0]) -> None:
    """Write a vocabulary and merges as ``names`` (vocab.json + merges.txt by default)."""
    (Path(folder) / names[0]).write_text(json.dumps(vocab, ensure_ascii=False),
                                          encoding="utf-8")
    (Path(folder) / names[1]).write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                          encoding="utf-8")


def encoding(vocabulary, origin: str) -> tiktoken.Encoding:
    """A ``vocabulary.Vocabulary`` as a tiktoken ``Encoding``; its merges are checked against
    its tokens.

    Raises:
        TokenizerError: when the merges do not build the tokens.
    """
    ranks = mergeable_ranks(vocabulary.bpe_vocab(), list(vocabulary.merges), origin)
    if b"" in ranks:
        raise TokenizerError(f"{origin}: token {ranks[b'']} is empty",
                             hint="the tokenizer files are damaged; use the model's own")
    special = {vocabulary.tokens[i]: i for i in vocabulary.added}
    try:
        return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens=special, explicit_n_vocab=len(vocabulary))
    except (ValueError, AssertionError) as error:  # two tokens of one text, an id left out
        raise TokenizerError(f"{origin}: the tokens do not number 0..{len(vocabulary) - 1} "
                             f"once each ({error})",
                             hint="the tokenizer files must come from one tokenizer") from None
