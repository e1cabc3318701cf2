"""GPT-2's tokenizer as a tiktoken ``Encoding``, built from local files with no network call."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import tiktoken

from .errors import TokenizerError
from .readers import read_json

END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256
# GPT-2's pre-tokenizer: contractions, letters, digits, punctuation runs, whitespace.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# (vocabulary, merges) file names: Hugging Face's, then OpenAI's release's (the same contents).
FILE_NAMES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
BUNDLED = resources.files("gpt2port") / "data"  # OpenAI's encoder.json and vocab.bpe, MIT


def byte_to_character() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte, as used in vocab.json and merges.txt."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    mapping = {byte: chr(byte) for byte in printable}
    mapping.update({byte: chr(256 + n) for n, byte in enumerate(others)})
    return mapping


def mergeable_ranks(vocab: dict[str, int], merges: list[str], origin: str) -> dict[bytes, int]:
    """Token bytes -> rank from vocab.json, checked against the merge order of merges.txt.

    Raises:
        TokenizerError: when the two files do not describe the same tokenizer.
    """
    to_byte = {char: byte for byte, char in byte_to_character().items()}
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


def load_tokenizer(folder: str | Path | None = None) -> tiktoken.Encoding:
    """The GPT-2 ``Encoding`` from ``folder``'s vocab.json and merges.txt (or OpenAI's
    encoder.json and vocab.bpe); default: the bundled files."""
    root = Path(folder) if folder is not None else BUNDLED
    vocab_path, merges_path = tokenizer_files(root) or (root / "vocab.json", root / "merges.txt")
    try:
        merges_text = merges_path.read_text(encoding="utf-8")
    except OSError as error:
        raise TokenizerError(f"{merges_path}: cannot read ({error.strerror or error})") from None
    vocab = read_json(vocab_path)
    merges = [line for line in merges_text.splitlines()
              if line and not line.startswith("#version")]
    ranks = mergeable_ranks(vocab, merges, str(root))
    return tiktoken.Encoding(
        name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: vocab.get(END_OF_TEXT, END_OF_TEXT_ID)},
        explicit_n_vocab=len(ranks) + 1,
    )
