"""Bad checkpoints end in the package's own errors, naming the file, the tensor and the shapes."""

import json
import os

import pytest
import torch
from checkpoints import edit_config, hub_state_dict, reference_model, write_layout
from safetensors.torch import save_file

from gpt2port import CheckpointError, ConfigError, MappingError, load_pretrained


def rewrite_weights(folder, change):
    """Apply ``change`` to the Hub-layout state dict and write it back."""
    state = hub_state_dict(reference_model())
    change(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def test_every_problem_is_listed_in_one_error(tiny_hub_folder):
    def damage(state):
        del state["h.1.mlp.c_fc.bias"]
        state["h.0.attn.c_proj.weight"] = torch.zeros(64, 60)
        state["h.0.extra.weight"] = torch.zeros(3)
    rewrite_weights(tiny_hub_folder, damage)
    with pytest.raises(MappingError) as caught:
        load_pretrained(tiny_hub_folder)
    message = str(caught.value)
    assert str(tiny_hub_folder / "model.safetensors") in message
    assert len(caught.value.problems) == 3
    assert "missing tensor 'h.1.mlp.c_fc.bias', expected shape [256]" in message
    assert "tensor 'h.0.attn.c_proj.weight': expected shape [64, 64], found [64, 60]" in message
    assert "unexpected tensor 'h.0.extra.weight' with shape [3]" in message
    assert "config assumed: " in message and "number_of_layers=2" in message


def test_config_that_disagrees_with_the_weights(tiny_hub_folder):
    edit_config(tiny_hub_folder, n_layer=3, n_embd=128)
    with pytest.raises(MappingError) as caught:
        load_pretrained(tiny_hub_folder)
    message = str(caught.value)
    assert "missing tensor 'h.2.ln_1.weight', expected shape [128]" in message
    assert "tensor 'wte.weight': expected shape [512, 128], found [512, 64]" in message


def test_integer_weights_are_refused(tiny_hub_folder):
    rewrite_weights(tiny_hub_folder,
                    lambda state: state.update({"ln_f.bias": torch.zeros(64, dtype=torch.int32)}))
    with pytest.raises(MappingError, match="'ln_f.bias': expected floating point, found torch.int32"):
        load_pretrained(tiny_hub_folder)


@pytest.mark.parametrize("change, message", [
    ({"n_head": 5}, "config.json: model config cannot work: n_head=5 does not divide n_embd=64"),
    ({"activation_function": "gelu_10"},
     "activation_function 'gelu_10' is not a function transformers' GPT-2 computes"),
    ({"n_inner": -3}, "n_inner must be a positive integer"),
    ({"model_type": "llama"}, "model_type is 'llama', not 'gpt2'"),
    ({"scale_attn_by_inverse_layer_idx": "yes"}, "scale_attn_by_inverse_layer_idx must be True or False"),
    ({"add_cross_attention": True}, "a cross-attention decoder (add_cross_attention=True"),
    ({"auto_map": {"AutoModelForCausalLM": "modeling.MyGPT"}},
     "a model with code of its own (auto_map names modeling.MyGPT)"),
    ({"architectures": ["LlamaForCausalLM"]},
     "architectures names 'LlamaForCausalLM', not a GPT-2 class gpt2port reads"),
])
def test_configs_this_model_cannot_implement(tiny_hub_folder, change, message):
    edit_config(tiny_hub_folder, **change)
    with pytest.raises(ConfigError) as caught:
        load_pretrained(tiny_hub_folder)
    assert message in str(caught.value)


def test_truncated_safetensors_names_the_file(tiny_hub_folder):
    path = tiny_hub_folder / "model.safetensors"
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(CheckpointError, match="past the .* bytes of data in the file") as caught:
        load_pretrained(tiny_hub_folder)
    assert str(path) in str(caught.value)


def test_header_length_past_the_end(tiny_hub_folder):
    path = tiny_hub_folder / "model.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header length 1000000000000 points past the end"):
        load_pretrained(tiny_hub_folder)


def test_unknown_dtype_is_named(tiny_hub_folder):
    header = json.dumps({"wte.weight": {"dtype": "F8_E9", "shape": [1], "data_offsets": [0, 1]}})
    (tiny_hub_folder / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header.encode() + b"\0")
    with pytest.raises(CheckpointError, match="'wte.weight': unsupported dtype 'F8_E9'"):
        load_pretrained(tiny_hub_folder)


def test_folder_without_weights_lists_what_it_has(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError,
                       match="no checkpoint of a known format; the folder has notes.txt"):
        load_pretrained(tmp_path)


def test_weights_without_config(tiny_hub_folder):
    (tiny_hub_folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json beside it"):
        load_pretrained(tiny_hub_folder / "model.safetensors")


def test_missing_shard_is_named(tmp_path):
    folder = write_layout("sharded", tmp_path / "sharded")
    shard = min(folder.glob("model-*.safetensors"))
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard '{shard.name}' is missing"):
        load_pretrained(folder)


class WritesAFile:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_that_carries_code_is_refused_without_running_it(tmp_path):
    folder = write_layout("pytorch_bin", tmp_path / "bin")
    target = tmp_path / "pwned"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["payload"] = WritesAFile(str(target))
    with open(folder / "pytorch_model.bin", "wb") as file:
        torch.save(state, file, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_pretrained(folder)
    assert not target.exists()
