"""Tokenizers are part of the checkpoint: a fine-tune with added tokens, saved by transformers,
keeps every token through every format that holds a tokenizer, proved by transformers'
``AutoTokenizer``, llama.cpp's own tokenizer and the gguf package."""

import json
import shutil
import warnings

import pytest
import torch
from checkpoints import write_layout
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

from gpt2port import load_pretrained, load_tokenizer
from gpt2port.conversion import ConversionWarning, convert
from gpt2port.proof.verification import verify_model
from gpt2port.text.tokenizer import BUNDLED

TEXT = "Hello <|user|> the covidvaccine works<|endoftext|><|pad|> ok <|assistant|>"


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory):
    """What transformers saves after add_special_tokens and add_tokens, embeddings resized to
    50,261 rows: tokenizer.json and tokenizer_config.json, no vocab.json."""
    tokenizer = GPT2Tokenizer(str(BUNDLED / "vocab.json"), str(BUNDLED / "merges.txt"))
    tokenizer.add_special_tokens({"pad_token": "<|pad|>",
                                  "additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    tokenizer.add_tokens(["covidvaccine"])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64))
    model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    folder = tmp_path_factory.mktemp("fine-tune") / "run"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer.encode(TEXT), tokenizer.pad_token_id


def quietly_convert(*args, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = convert(*args, **options)
    return written, [str(w.message) for w in caught if w.category is ConversionWarning]


def test_the_fine_tune_loads_verifies_and_its_tokenizer_has_the_added_tokens(fine_tune):
    folder, ids, _ = fine_tune
    assert not (folder / "vocab.json").exists()
    model = load_pretrained(folder)
    assert model.config["vocab_size"] == 50261
    assert verify_model(model, folder).passed
    ours = load_tokenizer(folder)
    assert ours.n_vocab == 50261
    assert ours.encode(TEXT) == ids


def test_gguf_holds_every_token_and_llama_cpp_tokenizes_like_transformers(fine_tune, tmp_path):
    folder, ids, pad = fine_tune
    gguf = pytest.importorskip("gguf")
    written, said = quietly_convert(folder, tmp_path / "model.gguf", to="gguf")
    assert not [s for s in said if s.startswith("tokenizer")], said
    reader = gguf.GGUFReader(str(written))
    fields = reader.fields
    tokens = [bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode()
              for i in fields["tokenizer.ggml.tokens"].data]
    types = [int(fields["tokenizer.ggml.token_type"].parts[i][0])
             for i in fields["tokenizer.ggml.token_type"].data]
    assert len(tokens) == 50261 and tokens[50258] == "<|user|>"
    assert types[50256] == types[50258] == gguf.TokenType.CONTROL
    assert types[50260] == gguf.TokenType.USER_DEFINED and types[3290] == gguf.TokenType.NORMAL
    pad_field = fields["tokenizer.ggml.padding_token_id"]
    assert int(pad_field.parts[pad_field.data[0]][0]) == pad
    assert load_tokenizer(written).encode(TEXT) == ids

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python did not build")
    llama = llama_cpp.Llama(str(written), vocab_only=True, verbose=False)
    assert llama.tokenize(TEXT.encode(), add_bos=False, special=True) == ids


def test_gguf_to_hf_gives_a_folder_autotokenizer_reads(fine_tune, tmp_path):
    pytest.importorskip("gguf")
    folder, ids, pad = fine_tune
    gguf_file, _ = quietly_convert(folder, tmp_path / "model.gguf", to="gguf")
    exported, _ = quietly_convert(gguf_file, tmp_path / "hf", to="hf")
    theirs = AutoTokenizer.from_pretrained(exported)
    assert theirs.encode(TEXT) == ids
    assert (theirs.pad_token_id, theirs.eos_token_id) == (pad, 50256)
    assert "<|user|>" in theirs.all_special_tokens


def test_openai_encoder_json_holds_the_added_tokens_and_says_what_it_loses(fine_tune, tmp_path):
    folder, ids, _ = fine_tune
    exported, said = quietly_convert(folder, tmp_path / "openai", to="openai")
    encoder = json.loads((exported / "encoder.json").read_text())
    assert len(encoder) == 50261 and encoder["covidvaccine"] == 50260
    assert any("not marked special" in s for s in said)
    assert load_tokenizer(exported).encode(TEXT) == ids


def test_llmc_tokenizer_file_round_trips_the_added_tokens(fine_tune, tmp_path):
    folder, ids, _ = fine_tune
    exported, said = quietly_convert(folder, tmp_path / "llmc", to="llmc")
    assert any("no padding id" in s for s in said)
    assert load_tokenizer(exported).encode(TEXT) == ids


def test_a_tokenizer_bigger_than_the_model_is_left_out_and_said(tmp_path):
    source = write_layout("hub", tmp_path / "hub")  # vocabulary 512, GPT-2's tokenizer beside
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(BUNDLED / name, source / name)
    exported, said = quietly_convert(source, tmp_path / "openai", to="openai")
    assert any("50257 tokens and the model 512" in s for s in said)
    assert not (exported / "encoder.json").exists()
