"""The book's, nanoGPT's and llm.c's checkpoints in and out, against those projects' own code
(the book's ``GPTModel``) or their documented layouts and transformers."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from checkpoints import TINY, load_reference, reference_model, write_hub_layout
from other_projects import (
    model_args,
    nanogpt_state,
    read_llmc_model,
    read_llmc_tokenizer,
    the_book,
    write_llmc_model,
    write_nanogpt_checkpoint,
)
from safetensors.torch import save_file

from gpt2port import CheckpointError, ConfigError, GPTModel, generate, load_pretrained
from gpt2port.conversion import ConversionWarning, convert

IDS = torch.randint(0, TINY["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(3))


def logits_of(model, ids=IDS):
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out)


def largest_difference(a, b, ids=IDS):
    return (logits_of(a, ids) - logits_of(b, ids)).abs().max().item()


# --- the book ---------------------------------------------------------------------------------

def book_config(**changes):
    return {"vocab_size": 512, "context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2,
            "drop_rate": 0.0, "qkv_bias": True, **changes}


def test_the_books_gptmodel_loads_the_export_strictly(tmp_path):
    source = write_hub_layout(reference_model(), tmp_path / "hub")
    exported = convert(source, tmp_path / "book", to="book")
    config = json.loads((exported / "config.json").read_text())
    assert set(config) == {"vocab_size", "context_length", "emb_dim", "n_heads", "n_layers",
                           "drop_rate", "qkv_bias"}
    theirs = the_book().GPTModel(config).eval()
    theirs.load_state_dict(torch.load(exported / "model.pth", weights_only=True), strict=True)
    assert largest_difference(theirs, load_reference(source)) <= 1e-5


@pytest.mark.parametrize("saved_as", ["model.pth", "model_and_optimizer.pth", "safetensors"])
def test_the_books_saved_state_dicts_load(saved_as, tmp_path):
    torch.manual_seed(1)
    theirs = the_book().GPTModel(book_config()).eval()
    tmp_path.joinpath("config.json").write_text(json.dumps(book_config()))
    if saved_as == "model.pth":
        path = tmp_path / saved_as
        torch.save(theirs.state_dict(), path)
    elif saved_as == "model_and_optimizer.pth":
        path = tmp_path / saved_as
        optimizer = torch.optim.AdamW(theirs.parameters(), lr=4e-4)
        torch.save({"model_state_dict": theirs.state_dict(),
                    "optimizer_state_dict": optimizer.state_dict()}, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, path)
    ours = load_pretrained(path)
    assert not ours.config["tie_output_head"]  # the book's head is its own tensor
    assert largest_difference(ours, theirs) <= 1e-5


def test_the_books_config_is_inferred_from_gpt2_sizes(tmp_path):
    torch.manual_seed(2)
    config = book_config(emb_dim=768, n_heads=12, n_layers=1, vocab_size=300)
    theirs = the_book().GPTModel(config).eval()
    torch.save(theirs.state_dict(), tmp_path / "model.pth")
    ours = load_pretrained(tmp_path / "model.pth")
    assert ours.config["number_of_heads"] == 12 and ours.config["qkv_bias"]
    assert largest_difference(ours, theirs, IDS % 300) <= 1e-4


def test_a_book_checkpoint_of_another_width_asks_for_its_config(tmp_path):
    torch.save(the_book().GPTModel(book_config()).state_dict(), tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="emb_dim=64 is not one of GPT-2's sizes") as caught:
        load_pretrained(tmp_path / "model.pth")
    assert "config.json" in caught.value.hint


def test_gptmodel_takes_the_books_config_keys():
    ours = GPTModel(book_config())
    assert ours.config["embedding_dimension"] == 64 and ours.config["number_of_layers"] == 2
    with pytest.raises(ConfigError, match="'emb_dim' and 'embedding_dimension' are the same"):
        GPTModel({**book_config(), "embedding_dimension": 64})


# --- nanoGPT ----------------------------------------------------------------------------------

@pytest.mark.parametrize("compiled", [False, True])
def test_nanogpt_checkpoint_matches_transformers_with_the_exact_gelu(compiled, tmp_path):
    reference = reference_model(activation_function="gelu")
    path = write_nanogpt_checkpoint(reference, tmp_path / "out", compiled=compiled)
    for source in (path, path.parent):  # the file, or the folder holding it
        ours = load_pretrained(source)
        assert ours.config["gelu_approximation"] == "none" and ours.config["tie_output_head"]
        assert largest_difference(ours, reference) <= 1e-5


def test_nanogpt_without_biases_matches_transformers_with_zero_biases(tmp_path):
    reference = reference_model(activation_function="gelu")
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.endswith(".bias"):
                parameter.zero_()
    ours = load_pretrained(write_nanogpt_checkpoint(reference, tmp_path / "out", bias=False))
    assert not ours.config["bias"] and ours.transformer_blocks[0].attention_norm.shift is None
    assert largest_difference(ours, reference) <= 1e-5


def test_a_bare_nanogpt_state_dict_with_its_config(tmp_path):
    reference = reference_model(activation_function="gelu")
    torch.save(nanogpt_state(reference), tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="no config.json beside it"):
        load_pretrained(tmp_path / "state.pt")
    (tmp_path / "config.json").write_text(json.dumps(model_args(reference)))
    assert largest_difference(load_pretrained(tmp_path / "state.pt"), reference) <= 1e-5


def test_the_padded_vocabulary_loads_and_padding_is_never_generated(tmp_path):
    reference = reference_model(vocab_size=50304, activation_function="gelu", n_layer=1)
    with torch.no_grad():  # every position's output is c; the padding rows score highest
        reference.transformer.ln_f.weight.zero_()
        reference.transformer.ln_f.bias.copy_(torch.linspace(-1, 1, 64))
        reference.transformer.wte.weight[50257:] = 10 * reference.transformer.ln_f.bias
    ours = load_pretrained(write_nanogpt_checkpoint(reference, tmp_path / "out"))
    assert ours.config["vocab_size"] == 50257 and ours.config["padded_vocab_size"] == 50304
    ids = torch.tensor([[1, 2, 3]])
    assert largest_difference(ours, reference) <= 1e-4
    assert logits_of(reference, ids)[0, -1].argmax() >= 50257  # transformers would pick padding
    assert max(generate(ours, ids, 5)[0].tolist()) < 50257


def test_nanogpt_export_states_the_gelu_change_and_loads_in_nanogpts_layout(tmp_path):
    source = write_hub_layout(reference_model(), tmp_path / "hub")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exported = convert(source, tmp_path / "nano", to="nanogpt")
    notes = [str(w.message) for w in caught if w.category is ConversionWarning]
    assert any(note.startswith("gelu_approximation 'tanh' -> 'none'") and
               "largest logit change on the verification prompt" in note for note in notes)
    saved = torch.load(exported / "ckpt.pt", weights_only=True)
    exact = reference_model(activation_function="gelu")
    assert saved["model"].keys() == nanogpt_state(exact).keys()  # what GPT.load_state_dict wants
    assert saved["model_args"] == model_args(exact, dropout=0.1)
    exact.load_state_dict(load_reference(source).state_dict())
    assert largest_difference(load_pretrained(exported), exact) <= 1e-5


def test_exact_gelu_is_refused_by_tanh_only_formats_unless_approximated(tmp_path):
    checkpoint = write_nanogpt_checkpoint(reference_model(activation_function="gelu"),
                                          tmp_path / "nano")
    for to in ("gguf", "openai", "llmc", "book"):
        with pytest.raises(ConfigError, match="exact .erf. GELU"):
            convert(checkpoint, tmp_path / to, to=to)
    with pytest.warns(ConversionWarning, match="'none' -> 'tanh'.*largest logit change"):
        convert(checkpoint, tmp_path / "book", to="book", approximate_gelu=True)
    hf = convert(checkpoint, tmp_path / "hf", to="hf")  # transformers knows the exact GELU
    assert json.loads((hf / "config.json").read_text())["activation_function"] == "gelu"


def test_no_bias_exports_write_zero_biases(tmp_path):
    reference = reference_model(activation_function="gelu")
    checkpoint = write_nanogpt_checkpoint(reference, tmp_path / "nano", bias=False)
    with pytest.warns(ConversionWarning, match="bias False -> True: biases written as zeros"):
        hf = convert(checkpoint, tmp_path / "hf", to="hf")
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.endswith(".bias"):
                parameter.zero_()
    assert largest_difference(load_reference(hf), reference) <= 1e-5


# --- llm.c ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bf16", [False, True])
def test_llmc_model_matches_transformers(bf16, tmp_path):
    reference = reference_model(vocab_size=500)
    path = write_llmc_model(reference, tmp_path / "model_00005000.bin", padded_vocab_size=512,
                            bf16=bf16)
    ours = load_pretrained(path, dtype="float32")
    assert (ours.config["vocab_size"], ours.config["padded_vocab_size"]) == (500, 512)
    if bf16:
        reference = reference.to(torch.bfloat16).float()
    with torch.no_grad():
        theirs = reference(IDS % 500).logits
        assert (logits_of(ours, IDS % 500)[..., :500] - theirs).abs().max() <= 1e-5


def test_llmc_export_is_read_by_its_layout(tmp_path):
    reference = reference_model()
    with pytest.warns(ConversionWarning, match="dropout_rate 0.1 -> 0.0: llmc has no place"):
        exported = convert(write_hub_layout(reference, tmp_path / "hub"), tmp_path / "llmc",
                           to="llmc", dtype="bf16")
    header, values = read_llmc_model(exported / "model.bin")
    config = reference.config
    assert header == [20240326, 5, 64, 512, 2, 4, 64, 512]
    expected = tmp_path / "expected.bin"
    _, wanted = read_llmc_model(write_llmc_model(reference, expected, padded_vocab_size=512,
                                                 bf16=True))
    assert np.array_equal(values, wanted) and config.n_embd == 64


def test_llmc_tokenizer_is_gpt2s(tmp_path):
    from transformers import GPT2Tokenizer

    from gpt2port.formats.llmc import write_tokenizer
    from gpt2port.text.tokenizer import BUNDLED
    from gpt2port.text.vocabulary import read_folder

    write_tokenizer(read_folder(BUNDLED), tmp_path / "gpt2_tokenizer.bin")
    header, tokens = read_llmc_tokenizer(tmp_path / "gpt2_tokenizer.bin")
    assert header == [20240328, 2, 50257, 50256]
    theirs = GPT2Tokenizer(str(BUNDLED / "vocab.json"), str(BUNDLED / "merges.txt"))
    for token in (0, 11, 262, 464, 3290, 30212, 50255):
        assert tokens[token].decode("utf-8") == theirs.decode([token])
    assert tokens[50256] == b"<|endoftext|>"


def test_a_file_that_is_neither_a_pickle_nor_llmc_says_what_it_found(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "gpt2_124M.bin").write_bytes(b"\x01\x02\x03\x04" + bytes(2000))
    done = subprocess.run([sys.executable, "-m", "gpt2port", "inspect",
                           str(tmp_path / "gpt2_124M.bin")], capture_output=True, text=True, check=False)
    assert done.returncode == 4 and "Traceback" not in done.stderr
    assert "neither a PyTorch pickle, a safetensors file nor llm.c's model file" in done.stderr
    assert "01 02 03 04" in done.stderr
