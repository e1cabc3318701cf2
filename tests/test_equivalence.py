"""gpt2port's logits and greedy ids against transformers' GPT2LMHeadModel, layout by layout."""

import pytest
import torch
from checkpoints import LAYOUTS, TINY, load_reference, write_layout

from gpt2port import generate, load_pretrained
from gpt2port.engine.decoding import Decoder, packed_projection

FULL_SIZE_PARAMETERS = 124_439_808


def reference_greedy(reference, prompt, new_tokens):
    return reference.generate(prompt, max_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=reference.config.eos_token_id,
                              attention_mask=torch.ones_like(prompt))


def max_abs_diff(reference, model, ids):
    with torch.no_grad():
        return (reference(ids).logits - model(ids)).abs().max().item()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tiny_checkpoint_matches_transformers(layout, tmp_path):
    folder = write_layout(layout, tmp_path / layout)
    reference = load_reference(folder)
    model = load_pretrained(folder, dtype=torch.float32)

    ids = torch.randint(0, TINY["vocab_size"], (3, 40), generator=torch.Generator().manual_seed(1))
    assert max_abs_diff(reference, model, ids) <= 1e-5

    prompt = ids[:1, :8]
    expected = reference_greedy(reference, prompt, 20)
    assert generate(model, prompt, 20).tolist() == expected.tolist()


@pytest.mark.parametrize("layout", ["hub", "untied_head", "explicit_tied_head"])
def test_output_head_is_tied_only_when_the_checkpoint_ties_it(layout, tmp_path):
    model = load_pretrained(write_layout(layout, tmp_path / layout))
    tied = model.output_head.weight is model.token_embedding_table.weight
    assert tied == (layout != "untied_head")


@pytest.mark.parametrize("layout, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                           ("hub", torch.float32)])
def test_default_dtype_is_the_checkpoints_own(layout, dtype, tmp_path):
    model = load_pretrained(write_layout(layout, tmp_path / layout))
    assert {parameter.dtype for parameter in model.parameters()} == {dtype}


def test_bf16_load_of_fp32_checkpoint_follows_transformers(tiny_hub_folder):
    reference = load_reference(tiny_hub_folder).to(torch.bfloat16)
    model = load_pretrained(tiny_hub_folder, dtype="bf16")
    ids = torch.arange(32).view(1, 32)
    with torch.no_grad():
        ours, theirs = model(ids).float(), reference(ids).logits.float()
    assert (ours - theirs).abs().max().item() <= 0.05 * theirs.abs().max().item()


def test_full_size_hub_layout_matches_transformers(full_size_hub_folder):
    reference = load_reference(full_size_hub_folder)
    model = load_pretrained(full_size_hub_folder)
    assert sum(parameter.numel() for parameter in model.parameters()) == FULL_SIZE_PARAMETERS
    assert sum(parameter.numel() for parameter in reference.parameters()) == FULL_SIZE_PARAMETERS

    ids = torch.tensor([[464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688]])
    assert max_abs_diff(reference, model, ids) <= 1e-4

    prompt = torch.tensor([[464, 3290]])
    assert generate(model, prompt, 18).tolist() == reference_greedy(reference, prompt, 18).tolist()



@pytest.mark.parametrize(("source", "dtype", "packed"), [
    ("hub", torch.float32, True),  # views of the mapped c_attn: no copy
    ("hub", torch.float16, True),  # converted into one buffer
    ("book", torch.float32, False),  # three tensors in the file: not copied just to pack them
    ("book", torch.float16, True),
])
def test_query_key_value_run_as_one_product_where_packed(source, dtype, packed, tmp_path):
    """Decoding runs the three projections as one product where their tensors are adjacent;
    the logits are transformers' either way."""
    from gpt2port.conversion import convert

    folder = write_layout("hub", tmp_path / "hub")
    if source == "book":
        folder = convert(folder, tmp_path / "book", to="book")
    model = load_pretrained(folder, dtype=dtype)
    attention = model.transformer_blocks[1].attention
    found = packed_projection(attention)
    assert (found is not None) == packed
    if packed:
        weights = [attention.query_projection.weight, attention.key_projection.weight,
                   attention.value_projection.weight]
        assert found[0].data_ptr() == weights[0].data_ptr()  # a view, not a copy
        assert torch.equal(found[0], torch.cat(weights))
    ids = torch.randint(0, TINY["vocab_size"], (2, 30), generator=torch.Generator().manual_seed(2))
    bound = 1e-5 if dtype == torch.float32 else 2e-2
    with torch.no_grad():
        expected = load_reference(write_layout("hub", tmp_path / "again")).to(dtype)(ids).logits
        for found in (model(ids), Decoder(model, 2).forward(ids)):
            assert (found.float() - expected.float()).abs().max() <= bound * expected.abs().max()


@pytest.mark.parametrize("change", ["replace the parameter", "replace its data"])
def test_a_changed_projection_is_used_at_once(change, tmp_path):
    """Decoding takes the projections' tensors as they are when it starts: a tensor replaced or
    changed in place is used by the next generation."""
    model = load_pretrained(write_layout("hub", tmp_path / "hub"))
    ids = torch.randint(0, TINY["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(3))
    key = model.transformer_blocks[0].attention.key_projection
    with torch.no_grad():
        before = Decoder(model, 1).forward(ids)
        if change == "replace the parameter":
            key.weight = torch.nn.Parameter(key.weight * 3)
        else:
            key.weight.data = key.weight.data * 3
        found = Decoder(model, 1).forward(ids)
        assert torch.allclose(found, model(ids), atol=1e-5)
    assert not torch.allclose(found, before, atol=1e-3)


class WithAdapter(torch.nn.Module):
    """A projection plus a low-rank change, as an adapter (LoRA) wraps one."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.weight, self.bias = layer, layer.weight, layer.bias
        self.down = torch.nn.Linear(layer.in_features, 2, bias=False)
        self.up = torch.nn.Linear(2, layer.out_features, bias=False)

    def forward(self, x):
        return self.layer(x) + self.up(self.down(x))


def test_a_wrapped_or_hooked_projection_is_not_packed_past(tmp_path):
    """An adapter around a projection, or a hook on one, runs in decoding too: the packed
    product would skip both (the adapter keeps the frozen weights)."""
    model = load_pretrained(write_layout("hub", tmp_path / "hub"))
    ids = torch.randint(0, TINY["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(4))
    attention = model.transformer_blocks[0].attention
    with torch.no_grad():
        plain = Decoder(model, 1).forward(ids)
        attention.value_projection = WithAdapter(attention.value_projection)
        assert packed_projection(attention) is None
        adapted = Decoder(model, 1).forward(ids)
        assert not torch.allclose(plain, adapted, atol=1e-3)
        assert torch.allclose(adapted, model(ids), atol=1e-5)  # the model's own forward agrees
    seen = []
    model.transformer_blocks[1].attention.key_projection.register_forward_hook(
        lambda module, args, output: seen.append(output.shape))
    generate(model, ids, 2)
    assert seen == [(1, 12, TINY["n_embd"]), (1, 1, TINY["n_embd"])]
