"""A checkpoint's tokenizer as data: its kind (GPT-2's byte-level BPE, WordPiece, SentencePiece,
another ``tokenizer.json`` model), every token by id, the tokens added to it, and the ids of its
special tokens, read from and written to the files each project keeps.

GPT-2's own tokenizer is 50,256 BPE tokens and ``<|endoftext|>``; a fine-tune may add tokens
(``tokenizer.add_tokens``, ``add_special_tokens``) and grow the embedding to match; GPT-2s of
other languages hold BERT's WordPiece (``vocab.txt``), a SentencePiece model (``spiece.model``)
or a byte-level BPE of their own. Every format that holds a tokenizer writes it from a
``Vocabulary`` (``formats/``); a folder's Hugging Face files are read here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from ..errors import TokenizerError, unreadable
from ..io.readers import read_json
from .tokenizer import END_OF_TEXT, TOKENIZER_JSON, byte_to_character, character_to_byte, read_bpe

# transformers' files beside vocab.json + merges.txt (or a tokenizer.json)
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
ADDED_TOKENS_FILE = "added_tokens.json"  # older transformers' added tokens: text -> id
WORDPIECE_FILE = "vocab.txt"  # BERT's WordPiece: a token per line, the line number its id
SENTENCEPIECE_FILES = ("spiece.model", "sentencepiece.bpe.model")  # a SentencePiece model
# the special tokens' roles, as transformers names them ("bos_token", "bos_token_id")
ROLES = ("bos", "eos", "pad", "unk", "sep", "cls", "mask")
# transformers' tokenizer files, copied together so that AutoTokenizer reads the copy as the source
HF_TOKENIZER_FILES = ("vocab.json", "merges.txt", TOKENIZER_JSON, WORDPIECE_FILE,
                      *SENTENCEPIECE_FILES, "tokenizer_config.json", "special_tokens_map.json",
                      "added_tokens.json")
# transformers' SentencePiece tokenizers that end a text with </s> (T5's, the Japanese GPT-2s')
T5_CLASSES = ("T5Tokenizer", "T5TokenizerFast")
# a tokenizer's kind -> in words
KINDS = {"bpe": "byte-level BPE", "wordpiece": "WordPiece", "sentencepiece": "SentencePiece",
         "tokenizer.json": "a tokenizer.json model"}


@dataclass(frozen=True)
class Vocabulary:
    """Every token by id: BPE tokens in GPT-2's printable byte alphabet (``Ġthe``), added ones as
    their text; ``added``: ids matched as whole text, not built by merges (``<|endoftext|>`` and
    every added token); ``special``: those that are control tokens; the role ids."""

    tokens: tuple[str, ...]
    merges: tuple[str, ...]
    added: frozenset[int] = frozenset()
    special: frozenset[int] = frozenset()
    roles: dict[str, int] = field(default_factory=dict)  # "bos", "eos", "pad"... -> id
    kind: str = "bpe"  # a key of KINDS; "bpe" is byte-level BPE, GPT-2's kind
    # transformers' own files as read (name, bytes): written back as they are, so that
    # AutoTokenizer reads a conversion's folder as the source's
    files: tuple[tuple[str, bytes], ...] = field(default=(), compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def is_gpt2_bpe(self) -> bool:
        """Whether this is a byte-level BPE in GPT-2's layout: its bytes first, then a token per
        merge, in merge order (GPT-2's own and its fine-tunes'), as OpenAI's files, llm.c and
        tiktoken hold a tokenizer."""
        if self.kind != "bpe":
            return False
        ids = {token: i for i, token in enumerate(self.tokens)}
        alphabet = byte_to_character().values()
        return all(ids.get(char, 256) < 256 for char in alphabet) and all(
            ids.get(merge.replace(" ", "")) == 256 + i for i, merge in enumerate(self.merges))

    def file(self, name: str) -> bytes | None:
        """The bytes of transformers' file ``name`` as read, or None."""
        return dict(self.files).get(name)

    def settings(self) -> dict:
        """``tokenizer_config.json``'s values as read ({} without one)."""
        found = self.file(CONFIG_FILES[0])
        try:
            values = json.loads(found) if found else {}
        except (ValueError, UnicodeDecodeError):
            return {}
        return values if isinstance(values, dict) else {}

    @property
    def extra(self) -> list[int]:
        """Ids added beyond GPT-2's own vocabulary (``<|endoftext|>`` excluded)."""
        return sorted(i for i in self.added if self.tokens[i] != END_OF_TEXT)

    def bpe_vocab(self) -> dict[str, int]:
        """vocab.json's content: the BPE tokens and ``<|endoftext|>``, without added tokens."""
        return {token: i for i, token in enumerate(self.tokens)
                if i not in self.added or token == END_OF_TEXT}

    def token_bytes(self, index: int) -> bytes:
        """What a token decodes to."""
        token = self.tokens[index]
        if index in self.added:
            return token.encode()
        to_byte = character_to_byte()
        return bytes(to_byte[char] for char in token)


def from_bpe(vocab: dict[str, int], merges: list[str], added: dict[int, tuple[str, bool]],
             roles: dict[str, int], origin: str) -> Vocabulary:
    """A Vocabulary from a BPE vocabulary, its merges and the added tokens (id -> (text,
    special)).

    Raises:
        TokenizerError: when the ids are not 0..N-1 with no gaps.
    """
    by_id = {i: token for token, i in vocab.items()}
    by_id.update({i: text for i, (text, _) in added.items()})
    # a token that is neither a byte nor made by a merge is whole text (OpenAI's encoder.json,
    # GGUF and llm.c list added tokens with the others)
    made = {*byte_to_character().values(), *(merge.replace(" ", "") for merge in merges)}
    added = {**{i: (token, False) for i, token in by_id.items()
                if token not in made and token != END_OF_TEXT}, **added}
    vocab = {token: i for token, i in vocab.items() if i not in added}
    if sorted(by_id) != list(range(len(by_id))):
        gaps = sorted(set(range(max(by_id, default=-1) + 1)) - set(by_id))[:5]
        raise TokenizerError(f"{origin}: token ids have gaps (no token for {gaps})",
                             hint="the tokenizer files must number every token once")
    special = {i for i, (_, is_special) in added.items() if is_special}
    end_of_text = vocab.get(END_OF_TEXT)
    if end_of_text is not None:
        special.add(end_of_text)
    added_ids = set(added) | ({end_of_text} if end_of_text is not None else set())
    if end_of_text is not None:
        roles = {"bos": end_of_text, "eos": end_of_text, **roles}
    return Vocabulary(tuple(by_id[i] for i in range(len(by_id))), tuple(merges),
                      frozenset(added_ids), frozenset(special), roles)


def read_folder(folder: Path) -> Vocabulary | None:
    """The tokenizer of a folder's files: a ``tokenizer.json`` of any model, vocab.json +
    merges.txt (or encoder.json + vocab.bpe), ``vocab.txt`` (WordPiece) or ``spiece.model``
    (SentencePiece), with transformers' added tokens and special-token roles
    (``tokenizer.json``'s ``added_tokens``, ``tokenizer_config.json``, ``added_tokens.json``,
    ``special_tokens_map.json``, ``config.json``'s ``*_token_id``). None when it has none.

    Raises:
        TokenizerError: when the files cannot be read or disagree, or a SentencePiece model
            is found without the sentencepiece package.
    """
    folder = Path(folder)
    other = other_model(folder)
    if other is not None:
        kind, tokens = other
        return _whole_vocabulary(folder, kind, tokens)
    found = read_bpe(folder)
    if found is None:
        return None
    vocab, merges = found
    origin = str(folder)
    added = _added_tokens(folder, vocab)
    text_ids = {text: i for i, (text, _) in added.items()} | vocab
    vocabulary = from_bpe({t: i for t, i in vocab.items() if i not in added}, merges, added,
                          _roles(folder, text_ids), origin)
    return replace(vocabulary, files=_hf_files(folder))


def other_model(folder: Path) -> tuple[str, list[str]] | None:
    """(kind, every token by id) of a folder's tokenizer that is not a byte-level BPE: a
    ``tokenizer.json`` of another model (or a BPE over another alphabet), ``vocab.txt``,
    ``spiece.model``; None for a byte-level BPE or no tokenizer.

    Raises:
        TokenizerError: when a file cannot be read.
    """
    path = folder / TOKENIZER_JSON
    if path.is_file():
        found = read_json(path)
        model = found.get("model") if isinstance(found, dict) else None
        if not isinstance(model, dict):
            raise TokenizerError(f"{path}: no tokenizer model in it",
                                 hint="the file is damaged; use the model's own")
        if not (model.get("type") == "BPE" and _byte_level(found)):
            return "tokenizer.json", _json_tokens(model, path)
        return None
    if any((folder / name).is_file() for name in ("vocab.json", "encoder.json")):
        return None
    if (folder / WORDPIECE_FILE).is_file():
        try:
            text = (folder / WORDPIECE_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise unreadable(folder / WORDPIECE_FILE, error, TokenizerError) from None
        return "wordpiece", text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    for name in SENTENCEPIECE_FILES:
        if (folder / name).is_file():
            return "sentencepiece", sentencepiece_pieces(folder / name)
    return None


def _byte_level(tokenizer: dict) -> bool:
    """Whether a tokenizer.json splits text as GPT-2's byte-level BPE does."""
    pre = tokenizer.get("pre_tokenizer")
    return isinstance(pre, dict) and pre.get("type") == "ByteLevel" and not tokenizer.get(
        "normalizer")


def _json_tokens(model: dict, path: Path) -> list[str]:
    """Every token of a tokenizer.json model by id: a vocab mapping (BPE, WordPiece, WordLevel)
    or Unigram's [piece, score] list."""
    vocab = model.get("vocab")
    if isinstance(vocab, list):
        tokens = [entry[0] if isinstance(entry, list) and entry else None for entry in vocab]
    elif isinstance(vocab, dict) and all(type(i) is int and i >= 0 for i in vocab.values()):
        tokens = [None] * (max(vocab.values(), default=-1) + 1)
        for token, i in vocab.items():
            tokens[i] = token
    else:
        tokens = [None]
    if not all(isinstance(token, str) for token in tokens):
        raise TokenizerError(f"{path}: model.vocab does not number its tokens 0..N-1",
                             hint="the file is damaged; use the model's own")
    return tokens


def sentencepiece_pieces(path: Path) -> list[str]:
    """Every piece of a SentencePiece model by id, read by the sentencepiece package.

    Raises:
        TokenizerError: without the package, or for a file it cannot read.
    """
    try:
        import sentencepiece
    except ImportError:
        raise TokenizerError(f"{path}: a SentencePiece tokenizer needs the sentencepiece "
                             "package", hint="pip install 'gpt2port[tokenizers]'") from None
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(path.read_bytes())
        return [processor.IdToPiece(i) for i in range(processor.GetPieceSize())]
    except (OSError, RuntimeError, UnicodeDecodeError) as error:
        raise TokenizerError(f"{path}: not a SentencePiece model the sentencepiece package reads "
                             f"({str(error).splitlines()[0] if str(error) else type(error).__name__})",
                             hint="the file is damaged; use the model's own") from None


def _whole_vocabulary(folder: Path, kind: str, tokens: list[str]) -> Vocabulary:
    """A tokenizer whose tokens the files number (not made by byte merges): its added tokens
    (past the model's own are appended), special tokens and roles."""
    by_id = dict(enumerate(tokens))
    ids = {token: i for i, token in by_id.items()}
    added = _added_tokens(folder, ids)
    by_id.update({i: text for i, (text, _) in added.items()})
    if sorted(by_id) != list(range(len(by_id))):
        gaps = sorted(set(range(max(by_id) + 1)) - set(by_id))[:5]
        raise TokenizerError(f"{folder}: token ids have gaps (no token for {gaps})",
                             hint="the tokenizer files must number every token once")
    ids.update({text: i for i, (text, _) in added.items()})
    roles = _roles(folder, ids)
    special = {i for i, (_, is_special) in added.items() if is_special} | set(roles.values())
    return Vocabulary(tuple(by_id[i] for i in range(len(by_id))), (), frozenset(added),
                      frozenset(special), roles, kind, files=_hf_files(folder))


def _added_tokens(folder: Path, vocab: dict[str, int]) -> dict[int, tuple[str, bool]]:
    """id -> (text, special) for the tokens transformers added, from whichever file says."""
    added = {}
    entries = _json_object(folder / "tokenizer.json").get("added_tokens")
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and type(entry.get("id")) is int and entry["id"] >= 0:
            added[entry["id"]] = (str(entry.get("content")), bool(entry.get("special")))
    decoder = _json_object(folder / CONFIG_FILES[0]).get("added_tokens_decoder")
    for key, entry in decoder.items() if isinstance(decoder, dict) else ():
        if str(key).isdigit() and isinstance(entry, dict):
            added.setdefault(int(key), (str(entry.get("content")), bool(entry.get("special"))))
    for text, i in _json_object(folder / ADDED_TOKENS_FILE).items():
        if type(i) is int and i >= 0:
            added.setdefault(i, (text, False))
    # <|endoftext|> is in vocab.json and listed as added: it stays a vocab token (special anyway)
    return {i: entry for i, entry in added.items() if vocab.get(entry[0]) != i}


def _roles(folder: Path, ids: dict[str, int]) -> dict[str, int]:
    """The bos/eos/pad ids the folder's files name (config.json's ids come last)."""
    roles = {}
    for name in CONFIG_FILES:
        values = _json_object(folder / name)
        for role in ROLES:
            value = values.get(f"{role}_token")
            text = value.get("content") if isinstance(value, dict) else value
            if isinstance(text, str) and text in ids:
                roles.setdefault(role, ids[text])
    values = _json_object(folder / "config.json")
    for role in ROLES:
        value = values.get(f"{role}_token_id")
        if type(value) is int and 0 <= value < len(ids):
            roles.setdefault(role, value)
    return roles


def _json_object(path: Path) -> dict:
    """A JSON file's object; {} when the file is absent or holds something else."""
    found = read_json(path) if path.is_file() else {}
    return found if isinstance(found, dict) else {}


def merges_from_tokens(ranks: dict[bytes, int]) -> list[str]:
    """The merges that build each BPE token (in rank order), rebuilt from the ranks alone as
    tiktoken's BPE would build them (llm.c's tokenizer file holds only the tokens)."""
    to_char = byte_to_character()
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = split_by_merges(ranks, token, rank)
        if len(parts) == 2:
            merges.append(" ".join("".join(to_char[b] for b in part) for part in parts))
    return merges


def split_by_merges(ranks: dict[bytes, int], token: bytes, below: int) -> list[bytes]:
    """``token`` merged by BPE with the merges ranked below ``below``: two parts for a BPE
    token, more for text no merges build (an added token)."""
    parts = [bytes([byte]) for byte in token]
    while len(parts) > 1:
        pairs = [(ranks.get(parts[i] + parts[i + 1], below), i) for i in range(len(parts) - 1)]
        rank, at = min(pairs)
        if rank >= below:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return parts


def write_hf_files(vocabulary: Vocabulary, folder: Path, context_length: int) -> None:
    """vocab.json, merges.txt, tokenizer.json, tokenizer_config.json and
    special_tokens_map.json as transformers' GPT-2 tokenizer saves them, added tokens included."""
    (folder / "vocab.json").write_text(json.dumps(vocabulary.bpe_vocab(), ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(vocabulary.merges) + "\n",
                                       encoding="utf-8")
    added = [{"id": i, "content": vocabulary.tokens[i], "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": i not in vocabulary.special,
              "special": i in vocabulary.special} for i in sorted(vocabulary.added)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False}, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocabulary.bpe_vocab(),
                  "merges": [merge.split(" ") for merge in vocabulary.merges]},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False),
                                           encoding="utf-8")
    roles = {f"{role}_token": vocabulary.tokens[i] for role, i in vocabulary.roles.items()}
    extra = [vocabulary.tokens[i] for i in vocabulary.extra if i in vocabulary.special]
    special_map = {**roles, **({"additional_special_tokens": extra} if extra else {})}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length,
              "add_prefix_space": False, "clean_up_tokenization_spaces": False,
              "added_tokens_decoder": {str(entry["id"]): {k: v for k, v in entry.items()
                                                          if k != "id"} for entry in added},
              **special_map}
    (folder / CONFIG_FILES[0]).write_text(json.dumps(config, indent=2, ensure_ascii=False),
                                          encoding="utf-8")
    (folder / CONFIG_FILES[1]).write_text(json.dumps(special_map, indent=2, ensure_ascii=False),
                                          encoding="utf-8")


def _hf_files(folder: Path) -> tuple[tuple[str, bytes], ...]:
    """transformers' tokenizer files of ``folder`` (where it has vocab.json or tokenizer.json)
    as (name, bytes).

    Raises:
        TokenizerError: when one cannot be read.
    """
    folder = Path(folder)
    if not any((folder / name).is_file() for name in ("vocab.json", TOKENIZER_JSON,
                                                       WORDPIECE_FILE, *SENTENCEPIECE_FILES)):
        return ()
    found = []
    for name in HF_TOKENIZER_FILES:
        if (folder / name).is_file():
            try:
                found.append((name, (folder / name).read_bytes()))
            except OSError as error:
                raise unreadable(folder / name, error, TokenizerError) from None
    return tuple(found)


def write_tokenizer_files(vocabulary: Vocabulary, folder: Path, context_length: int) -> None:
    """``vocabulary`` as transformers' files: those it was read from as they were, else
    written (``write_hf_files``, a byte-level BPE)."""
    if not vocabulary.files:
        write_hf_files(vocabulary, folder, context_length)
    for name, content in vocabulary.files:
        (Path(folder) / name).write_bytes(content)


def wordpiece_files(vocabulary: Vocabulary, *, lowercase: bool, strip_accents: bool
                    ) -> tuple[tuple[str, bytes], ...]:
    """vocab.txt and tokenizer_config.json as transformers' BertTokenizer saves them, for a
    WordPiece read from elsewhere (a GGUF)."""
    roles = {f"{role}_token": vocabulary.tokens[i] for role, i in vocabulary.roles.items()}
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase,
              "strip_accents": strip_accents, **roles}
    return ((WORDPIECE_FILE, "".join(f"{token}\n" for token in vocabulary.tokens).encode()),
            (CONFIG_FILES[0], json.dumps(config, indent=2, ensure_ascii=False).encode()))
