"""A checkpoint's tokenizer is whatever it holds (issue 29, items 3, 4 and 7): WordPiece
(``vocab.txt``), SentencePiece (``spiece.model``) and a byte-level BPE of its own, trained here
and kept as the Hub's GPT-2s of other languages keep them (raw files, no tokenizer.json). Each
encodes as transformers' AutoTokenizer does on the same files, is what generate, verify and
compare encode text with, survives ``--to hf``, and goes into GGUF only where llama.cpp encodes
it the same."""

import json
import subprocess
import sys
import warnings

import pytest
import torch
from trained_tokenizers import KINDS, TEXTS, model_with_tokenizer

TESTED = [kind for kind in KINDS if kind != "sentencepiece-unnormalized"]
from transformers import AutoTokenizer

from gpt2port import (
    ConfigError,
    TokenizerError,
    compare,
    convert,
    load_pretrained,
    load_tokenizer,
    verify,
)
from gpt2port.conversion import ConversionWarning
from gpt2port.proof.figures import PROMPT_TEXT, prompt_for


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {kind: model_with_tokenizer(kind, root / kind) for kind in KINDS
            if kind != "sentencepiece-unnormalized"}  # (for the hostile-file test)


def quietly(*args, **kwargs):
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", ConversionWarning)
        written = convert(*args, **kwargs)
    return written, [str(each.message) for each in said]


@pytest.mark.parametrize("kind", TESTED)
def test_it_encodes_and_decodes_as_autotokenizer_does(kind, models):
    ours, theirs = load_tokenizer(models[kind]), AutoTokenizer.from_pretrained(models[kind])
    assert ours.n_vocab == len(theirs)
    for text in (*TEXTS, f"a {theirs.all_special_tokens[0]} b"):
        for wrapped in (False, True):
            ids = theirs.encode(text, add_special_tokens=wrapped)
            assert ours.encode(text, add_special_tokens=wrapped) == ids, (text, wrapped)
            assert ours.decode(ids) == theirs.decode(ids), text
    for role in ("bos", "eos", "pad", "unk", "sep", "cls"):  # (config.json may name more)
        expected = getattr(theirs, f"{role}_token_id")
        assert expected is None or getattr(ours, f"{role}_token_id") == expected, role


@pytest.mark.parametrize("kind", TESTED)
def test_hf_export_keeps_the_tokenizer(kind, models, tmp_path):
    exported, _ = quietly(models[kind], tmp_path / "hf", to="hf")
    source, copy = AutoTokenizer.from_pretrained(models[kind]), AutoTokenizer.from_pretrained(
        exported)
    for text in TEXTS:
        assert copy.encode(text) == source.encode(text)
    native, _ = quietly(models[kind], tmp_path / "native", to="native")
    assert load_tokenizer(native).encode(TEXTS[0]) == source.encode(TEXTS[0],
                                                                  add_special_tokens=False)


@pytest.mark.parametrize("kind", TESTED)
def test_verify_and_compare_encode_with_the_models_tokenizer(kind, models, tmp_path):
    tokenizer = load_tokenizer(models[kind])
    model = load_pretrained(models[kind])
    assert prompt_for(model.config, tokenizer) == tokenizer.encode(PROMPT_TEXT)
    result = verify(models[kind], reference="numpy", text=TEXTS[3])
    assert result.passed and result.over_text.tokens == len(tokenizer.encode(TEXTS[3]))
    found = compare(models[kind], models[kind], text=TEXTS[2])
    assert found.logits.tokens == len(tokenizer.encode(TEXTS[2]))
    assert found.logits.perplexity_first == found.logits.perplexity_second > 0


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece", "byte-level-bpe"])
def test_generate_on_the_command_line_encodes_the_prompt_with_it(kind, models):
    prompt = TEXTS[2]
    run = subprocess.run([sys.executable, "-m", "gpt2port", "generate", str(models[kind]),
                          prompt, "--max-new-tokens", "6"], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
    prompt_ids = load_tokenizer(models[kind]).encode(prompt)
    assert f"[{len(prompt_ids)} prompt tokens, 6 new tokens" in run.stderr
    assert run.stdout.startswith(prompt)


@pytest.mark.parametrize("kind", TESTED)
def test_gguf_holds_it_and_reads_it_back(kind, models, tmp_path):
    pytest.importorskip("gguf")
    written, _ = quietly(models[kind], tmp_path / "model.gguf", to="gguf")
    source, back = AutoTokenizer.from_pretrained(models[kind]), load_tokenizer(written)
    for text in TEXTS:
        for wrapped in (False, True):
            assert back.encode(text, add_special_tokens=wrapped) == source.encode(
                text, add_special_tokens=wrapped), (text, wrapped)
    hf, _ = quietly(written, tmp_path / "hf", to="hf")
    again = AutoTokenizer.from_pretrained(hf)
    for text in TEXTS:
        assert again.encode(text) == source.encode(text), text


@pytest.mark.parametrize("kind", TESTED)
def test_llama_cpp_tokenizes_the_gguf_as_the_source_does(kind, models, tmp_path, capfd):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed "
                                    "(.ci/run builds it from source; this test says so when "
                                    "that build failed)")
    written, _ = quietly(models[kind], tmp_path / "model.gguf", to="gguf")
    capfd.readouterr()
    llm = llama_cpp.Llama(str(written), vocab_only=True, verbose=True)
    log = capfd.readouterr().err
    assert not any(warning in log for warning in (  # llama.cpp takes it as its own
        "missing pre-tokenizer", "special_eos_id is not in", "control-looking", "DEGRADED"))
    source = AutoTokenizer.from_pretrained(models[kind])
    for text in TEXTS:
        for wrapped in (False, True):
            theirs = llm.tokenize(text.encode(), add_bos=wrapped, special=True)
            assert theirs == source.encode(text, add_special_tokens=wrapped), (text, wrapped)


def test_gguf_refuses_what_llama_cpp_would_encode_differently(models, tmp_path):
    """A BPE SentencePiece model: llama.cpp's 't5' tokenizer is a unigram one."""
    from trained_tokenizers import sentencepiece

    folder = tmp_path / "bpe-spm"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((models["sentencepiece"] / name).read_bytes())
    sentencepiece(folder, size=300, model_type="bpe")
    with pytest.raises(ConfigError, match="not a unigram one") as refused:
        quietly(folder, tmp_path / "model.gguf", to="gguf")
    assert "hf" in refused.value.hint
    assert not (tmp_path / "model.gguf").exists()


@pytest.mark.parametrize("to", ["openai", "llmc"])
def test_formats_of_gpt2s_bpe_leave_another_tokenizer_out_and_say_so(to, models, tmp_path):
    written, said = quietly(models["wordpiece"], tmp_path / "out", to=to)
    assert any("left out" in line and "WordPiece" in line for line in said), said
    assert not (written / "encoder.json").exists()
    assert not (written / "gpt2_tokenizer.bin").exists()


def test_a_gguf_needs_a_tokenizer_and_takes_one_from_the_user(models, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((models["wordpiece"] / name).read_bytes())
    with pytest.raises(ConfigError, match="llama.cpp refuses a GGUF without one") as refused:
        quietly(bare, tmp_path / "no.gguf", to="gguf")
    assert "--tokenizer" in refused.value.hint and not (tmp_path / "no.gguf").exists()
    written, _ = quietly(bare, tmp_path / "model.gguf", to="gguf",
                         tokenizer=models["wordpiece"])
    assert load_tokenizer(written).encode(TEXTS[0]) == load_tokenizer(
        models["wordpiece"]).encode(TEXTS[0])


def test_without_a_tokenizer_text_is_refused_and_ids_still_verify(models, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((models["sentencepiece"] / name).read_bytes())
    assert verify(bare, reference="numpy").passed  # ids spread over its vocabulary
    with pytest.raises(TokenizerError, match="not GPT-2's: text cannot") as refused:
        compare(bare, bare, text="some text")
    assert "--tokenizer" in refused.value.hint
    assert compare(bare, bare).logits.max_abs == 0  # ids drawn across the vocabulary
    run = subprocess.run([sys.executable, "-m", "gpt2port", "generate", str(bare), "text"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 5 and "the prompt cannot be turned into its ids" in run.stderr
    assert verify(bare, reference="numpy", text=TEXTS[0],
                  tokenizer=models["sentencepiece"]).passed


def test_a_tokenizer_too_big_for_the_model_is_not_its_own(models, tmp_path):
    with pytest.raises(TokenizerError, match="it is not this model's tokenizer"):
        verify(models["sentencepiece"], reference="numpy", text="x y z", tokenizer="gpt2")


def test_the_tokenizers_files_are_its_vocabulary(models):
    """vocab.txt's lines are the ids; the model's config names the same special ids."""
    tokenizer = load_tokenizer(models["wordpiece"])
    lines = (models["wordpiece"] / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert list(tokenizer.vocabulary.tokens) == lines
    config = json.loads((models["wordpiece"] / "config.json").read_text())
    assert tokenizer.cls_token_id == config["bos_token_id"]
    assert torch.equal(torch.tensor(tokenizer.encode(TEXTS[0])),
                       torch.tensor(AutoTokenizer.from_pretrained(models["wordpiece"]).encode(
                           TEXTS[0], add_special_tokens=False)))
