"""The Hugging Face name table, in both directions, against transformers' own model; the slot
list against the model; the table parser."""

import pytest
import torch
from checkpoints import reference_model

from gpt2port import GPTModel
from gpt2port.formats import FORMATS, huggingface
from gpt2port.formats.stream import TensorStream
from gpt2port.formats.table import MappingTable, to_model
from gpt2port.slots import expected_tensors


def random_model(**changes):
    torch.manual_seed(0)
    config = {"vocab_size": 512, "context_length": 64, "embedding_dimension": 64,
              "number_of_heads": 4, "number_of_layers": 2, "dropout_rate": 0.0,
              "qkv_bias": True, "tie_output_head": False, **changes}
    return GPTModel(config).eval()


def test_export_loads_into_transformers_with_identical_logits():
    model = random_model()
    exported = dict(TensorStream(huggingface.TABLE, model.state_dict(), model.config))
    reference = reference_model(tie_word_embeddings=False)
    body = {f"transformer.{name}": tensor for name, tensor in exported.items()
            if name != "lm_head.weight"}
    missing, unexpected = reference.load_state_dict(
        {**body, "lm_head.weight": exported["lm_head.weight"]}, strict=False)
    assert unexpected == [] and all(name.endswith("attn.bias") for name in missing)
    ids = torch.arange(40).view(2, 20)
    with torch.no_grad():
        assert torch.allclose(reference(ids).logits, model(ids), atol=1e-5, rtol=0)


def test_ours_to_huggingface_to_ours_is_exact():
    model = random_model()
    state = model.state_dict()
    exported = dict(TensorStream(huggingface.TABLE, state, model.config))
    back = to_model(huggingface.TABLE, exported, model.config, origin="round trip")
    assert back.keys() == state.keys()
    assert all(torch.equal(back[name], state[name]) for name in state)


def test_huggingface_to_ours_to_huggingface_is_exact():
    reference = reference_model(tie_word_embeddings=False)
    source = huggingface.TABLE.strip_prefix(reference.state_dict())
    model = random_model()
    ours = to_model(huggingface.TABLE, source, model.config, origin="test")
    back = dict(TensorStream(huggingface.TABLE, ours, model.config))
    assert back.keys() == source.keys()
    assert all(torch.equal(back[name], source[name]) for name in source)


def test_conversion_makes_views_not_copies():
    reference = reference_model(tie_word_embeddings=False)
    source = huggingface.TABLE.strip_prefix(reference.state_dict())
    model = random_model()
    ours = to_model(huggingface.TABLE, source, model.config, origin="test")
    packed = source["h.0.attn.c_attn.weight"]
    query = ours["transformer_blocks.0.attention.query_projection.weight"]
    assert query.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()


def test_shape_rule_of_each_transform_agrees_with_the_transform():
    state = random_model().state_dict()
    for each in huggingface.TABLE.expand(2):
        tensors = [state[name] for name in each.target]
        converted = each.transform.from_model(tensors)
        assert each.transform.from_model_shapes([tuple(t.shape) for t in tensors]) == [
            tuple(t.shape) for t in converted]


@pytest.mark.parametrize("changes", [
    {}, {"bias": False, "qkv_bias": False}, {"qkv_bias": False},
    {"tie_output_head": True, "padded_vocab_size": 576},
])
def test_the_slot_list_names_every_tensor_of_the_model(changes):
    model = random_model(**changes)
    state = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if model.config["tie_output_head"]:
        del state["output_head.weight"]
    assert expected_tensors(model.config) == state


@pytest.mark.parametrize("each", FORMATS, ids=lambda each: each.name)
def test_every_format_maps_each_slot_once(each):
    """Every model tensor comes from one tensor of the format (the head may be left tied)."""
    config = random_model().config
    targets = [name for rule in each.name_table.expand(2) for name in rule.target]
    assert len(targets) == len(set(targets))
    missing = set(expected_tensors(config)) - set(targets)
    assert missing == (set() if each.head != "tied" or each.name == "nanogpt"
                       else {"output_head.weight"})  # nanoGPT saves lm_head, sharing wte


@pytest.mark.parametrize(("line", "said"), [
    ("attention.nonsense.weight  h.{}.x", "is not a slot"),
    ("layer_norm.scale  ln_f.weight  rotate", "unknown transform 'rotate'"),
    ("layer_norm.scale  h.{}.ln_f.weight", "one side is per layer"),
])
def test_a_table_line_that_cannot_work_is_refused_at_import(line, said):
    with pytest.raises(ValueError, match=said):
        MappingTable.parse("test", line)
