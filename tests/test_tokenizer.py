"""The tokenizer built from local files, against tiktoken's and Hugging Face's own builds."""

import hashlib

import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public
from transformers import GPT2TokenizerFast

from gpt2port import TokenizerError, load_tokenizer
from gpt2port.text.tokenizer import BUNDLED

TEXTS = [
    "Every effort moves you", "Hello, world! It's 2026 — naïve café 🚀",
    "  leading and trailing spaces  ", "line\nbreaks\r\n\ttabs", "I'll've they're we'd",
    "<|endoftext|> is special", "12345 67.89 0x1F", "日本語のテキスト", "",
]


@pytest.fixture(scope="module")
def tiktoken_reference(tmp_path_factory):
    """tiktoken's own gpt2 Encoding (its pattern, its pinned hashes) fed the bundled files."""
    local = {"vocab.bpe": BUNDLED / "merges.txt", "encoder.json": BUNDLED / "vocab.json"}
    original = tiktoken.load.read_file
    tiktoken.load.read_file = lambda url: local[url.rsplit("/", 1)[1]].read_bytes()
    pytest.MonkeyPatch().setenv("TIKTOKEN_CACHE_DIR", "")
    try:
        return tiktoken.Encoding(**tiktoken_ext.openai_public.gpt2())
    finally:
        tiktoken.load.read_file = original


def test_bundled_files_carry_tiktokens_pinned_hashes():
    digest = (lambda name: hashlib.sha256((BUNDLED / name).read_bytes()).hexdigest())
    assert digest("merges.txt") == "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
    assert digest("vocab.json") == "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def test_matches_tiktoken_and_huggingface(tiktoken_reference):
    ours = load_tokenizer()
    huggingface = GPT2TokenizerFast.from_pretrained(str(BUNDLED))
    assert ours.encoding._mergeable_ranks == tiktoken_reference._mergeable_ranks
    for text in TEXTS:
        # "<|endoftext|>" as ordinary text
        plain = ours.encoding.encode(text, disallowed_special=())
        assert plain == tiktoken_reference.encode(text, disallowed_special=())
        assert ours.decode(plain) == text
        special = ours.encode(text)  # special tokens in the text matched, as transformers does
        assert special == tiktoken_reference.encode(text, allowed_special="all")
        assert special == huggingface.encode(text)


def test_end_of_text():
    tokenizer = load_tokenizer()
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == 50256
    assert tokenizer.encode("<|endoftext|>") == [50256]
    assert tokenizer.n_vocab == 50257


def test_folder_with_files_that_disagree(tmp_path):
    (tmp_path / "vocab.json").write_bytes((BUNDLED / "vocab.json").read_bytes())
    merges = (BUNDLED / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges[5] = "Ġzq qz"  # makes a token vocab.json does not have
    (tmp_path / "merges.txt").write_text("\n".join(merges), encoding="utf-8")
    with pytest.raises(TokenizerError, match="cannot build its tokenizer") as refused:
        load_tokenizer(tmp_path)
    assert "damaged" in refused.value.hint


def test_folder_without_files(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer files") as caught:
        load_tokenizer(tmp_path)
    assert caught.value.hint


def test_a_tokenizer_json_alone_is_read(tmp_path):
    """transformers 5 saves only tokenizer.json: the same tokenizer comes out of it."""
    from transformers import GPT2TokenizerFast

    theirs = GPT2TokenizerFast.from_pretrained(str(BUNDLED))
    theirs.save_pretrained(tmp_path)
    assert not (tmp_path / "vocab.json").exists()  # what this test is about
    ours = load_tokenizer(tmp_path)
    text = "Hello world! The dog's 3 cafés <|endoftext|> ok"
    assert ours.encode(text) == theirs.encode(text)
    assert ours.n_vocab == load_tokenizer().n_vocab == 50257
