"""The book's faster training script's layout (issue 30, item 3), saved by the book's own
``GPTModelFast`` (``llms_from_scratch.ch04``) the way that script saves it: compiled (names under
``_orig_mod.``), bf16, a vocabulary of 50,304, fused ``att.qkv``, ``nn.LayerNorm``."""

import json
import warnings

import pytest
import torch
from other_projects import the_book

from gpt2port import convert, inspect, load_pretrained, verify

CONFIG = {"vocab_size": 50304, "context_length": 32, "emb_dim": 64, "n_heads": 4,
          "n_layers": 2, "drop_rate": 0.0, "qkv_bias": True}
IDS = torch.tensor([[464, 3290, 373, 1043, 287, 257, 50256, 11]])


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """The fast model, every tensor random (norms too), compiled and cast to bf16 as the script
    does, its state dict saved with torch.save and its config dict as config.json; and the
    book's own logits for IDS from the bf16 weights, computed in fp32."""
    book = the_book()
    torch.manual_seed(0)
    model = book.GPTModelFast(CONFIG).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    compiled = torch.compile(model)  # compiles on first call only: its state dict is enough
    compiled.to(torch.bfloat16)
    folder = tmp_path_factory.mktemp("book-fast")
    torch.save(compiled.state_dict(), folder / "model.pth")
    (folder / "config.json").write_text(json.dumps(CONFIG))
    with torch.no_grad():
        expected = model.float()(IDS)
    return folder, expected


def test_the_fast_layout_loads_with_the_book_s_own_logits(fast):
    folder, expected = fast
    names = torch.load(folder / "model.pth", weights_only=True)
    assert all(name.startswith("_orig_mod.") for name in names)
    assert any(name.endswith("att.qkv.weight") for name in names)
    model = load_pretrained(folder, dtype="float32")
    assert model.config["vocab_size"] == 50257 and model.config["padded_vocab_size"] == 50304
    with torch.no_grad():
        found = model(IDS)
    assert torch.allclose(found, expected, atol=1e-4, rtol=0), (found - expected).abs().max()
    assert load_pretrained(folder).token_embedding_table.weight.dtype == torch.bfloat16


def test_the_fast_layout_verifies_and_names_its_tensors(fast):
    folder, _ = fast
    result = verify(folder)
    assert result.passed, result.report()
    shown = inspect(folder)
    assert "_orig_mod.trf_blocks.0.att.qkv.weight" in shown or "trf_blocks.0.att.qkv.weight" in shown
    assert "split in 3" in shown


@pytest.mark.parametrize("to", ["hf", "book"])
def test_the_fast_layout_converts(fast, tmp_path, to):
    folder, expected = fast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the padding rows' note
        convert(folder, tmp_path / to, to=to, dtype="f32")
    model = load_pretrained(tmp_path / to)
    with torch.no_grad():
        found = model(IDS)[..., :50257]
    assert torch.allclose(found, expected[..., :50257], atol=1e-4, rtol=0)
    assert verify(tmp_path / to).passed
