"""The from-scratch model: the book's example, sizes of every preset, config validation."""

import pytest
import torch
from checkpoints import write_layout
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2port import (
    GPT_CONFIG_124M,
    PRESETS,
    ConfigError,
    GPTModel,
    load_pretrained,
    load_tokenizer,
)


def test_the_books_example_runs_as_written():
    tokenizer = load_tokenizer()
    batch = torch.stack([torch.tensor(tokenizer.encode(text))
                         for text in ("Every effort moves you", "Every day holds a")])
    assert batch.tolist() == [[6109, 3626, 6100, 345], [6109, 1110, 6622, 257]]
    torch.manual_seed(123)
    model = GPTModel(GPT_CONFIG_124M)
    assert model(batch).shape == (2, 4, 50257)
    assert sum(p.numel() for p in model.parameters()) == 163_009_536  # untied, as in the book


def test_top_level_modules_read_as_english():
    with torch.device("meta"):
        model = GPTModel(GPT_CONFIG_124M)
    assert [name for name, _ in model.named_children()] == [
        "token_embedding_table", "position_embedding_table", "dropout_embedding",
        "transformer_blocks", "layer_norm", "output_head"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_sizes_equal_transformers(name):
    config = PRESETS[name].config
    with torch.device("meta"):
        ours = GPTModel(config)
        theirs = GPT2LMHeadModel(GPT2Config(
            n_embd=config["embedding_dimension"], n_layer=config["number_of_layers"],
            n_head=config["number_of_heads"]))
    count = (lambda model: sum(p.numel() for p in model.parameters()))
    assert count(ours) == count(theirs)


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = GPTModel({**GPT_CONFIG_124M, "embedding_dimension": 64, "number_of_layers": 1,
                      "number_of_heads": 4, "vocab_size": 100, "dropout_rate": 0.5})
    ids = torch.arange(10).view(1, 10)
    assert not torch.equal(model.train()(ids), model(ids))
    assert torch.equal(model.eval()(ids), model(ids))


def test_too_long_input_is_refused():
    model = GPTModel({**GPT_CONFIG_124M, "embedding_dimension": 8, "number_of_layers": 1,
                      "number_of_heads": 2, "vocab_size": 10, "context_length": 4})
    with pytest.raises(ValueError, match="5 tokens exceed the context length of 4"):
        model(torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.parametrize("change, message", [
    ({"number_of_heads": 7}, "number_of_heads=7 does not divide embedding_dimension=768"),
    ({"number_of_layers": 0}, "number_of_layers must be a positive integer, got 0"),
    ({"vocab_size": 50257.0}, "vocab_size must be a positive integer"),
    ({"n_embd": 768}, "unknown key 'n_embd'"),
    ({"dropout_rate": 1.5}, "dropout_rate must be a number in [0, 1)"),
    ({"qkv_bias": "yes"}, "qkv_bias must be True or False"),
])
def test_configs_that_cannot_work_are_refused(change, message):
    with pytest.raises(ConfigError) as caught:
        GPTModel({**GPT_CONFIG_124M, **change})
    assert message in str(caught.value)


def test_every_config_problem_is_reported_at_once():
    config = {key: value for key, value in GPT_CONFIG_124M.items() if key != "qkv_bias"}
    with pytest.raises(ConfigError) as caught:
        GPTModel({**config, "number_of_heads": -1, "colour": "red"})
    for part in ("unknown key 'colour'", "missing key 'qkv_bias'", "number_of_heads must be"):
        assert part in str(caught.value)


def test_torch_compile_traces_the_model_in_one_graph(tmp_path):
    """No graph break (the packed q/k/v product's address check stays out of a trace)."""
    model = load_pretrained(write_layout("hub", tmp_path / "hub"))
    ids = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        traced = torch.compile(model, backend="eager", fullgraph=True)(ids)
        assert torch.allclose(traced, model(ids), atol=1e-5)
