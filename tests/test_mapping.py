"""The Hugging Face name table, in both directions, against transformers' own model."""

import torch
from checkpoints import reference_model

from gpt2port import GPTModel
from gpt2port.formats import huggingface
from gpt2port.formats.table import from_model, to_model


def random_model(**changes):
    torch.manual_seed(0)
    config = {"vocab_size": 512, "context_length": 64, "embedding_dimension": 64,
              "number_of_heads": 4, "number_of_layers": 2, "dropout_rate": 0.0,
              "qkv_bias": True, "tie_output_head": False, **changes}
    return GPTModel(config).eval()


def test_export_loads_into_transformers_with_identical_logits():
    model = random_model()
    exported = from_model(huggingface.TABLE, model.state_dict(), 2)
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
    back = to_model(huggingface.TABLE, from_model(huggingface.TABLE, state, 2), state,
                    model.config, origin="round trip")
    assert back.keys() == state.keys()
    assert all(torch.equal(back[name], state[name]) for name in state)


def test_huggingface_to_ours_to_huggingface_is_exact():
    reference = reference_model(tie_word_embeddings=False)
    source = huggingface.TABLE.strip_prefix(reference.state_dict())
    model = random_model()
    ours = to_model(huggingface.TABLE, source, model.state_dict(), model.config, origin="test")
    back = from_model(huggingface.TABLE, ours, 2)
    assert back.keys() == source.keys()
    assert all(torch.equal(back[name], source[name]) for name in source)


def test_conversion_makes_views_not_copies():
    reference = reference_model(tie_word_embeddings=False)
    source = huggingface.TABLE.strip_prefix(reference.state_dict())
    model = random_model()
    ours = to_model(huggingface.TABLE, source, model.state_dict(), model.config, origin="test")
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
