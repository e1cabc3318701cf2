"""gpt2port's logits and greedy ids against transformers' GPT2LMHeadModel, layout by layout."""

import pytest
import torch
from checkpoints import LAYOUTS, TINY, load_reference, write_layout

from gpt2port import generate, load_pretrained

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

