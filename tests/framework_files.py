"""Test-side writers of transformers' TensorFlow and Flax weights files, to their documented
layouts, with h5py and the msgpack package (transformers 5 has no TF or Flax classes).

``tf_model.h5`` is what Keras's ``save_weights`` writes for transformers' TF classes: the root's
``layer_names``, a group per layer listing its ``weight_names``, each weight a dataset named
``<model scope>/<path>:0``. ``flax_model.msgpack`` is ``flax.serialization.to_bytes`` of the
parameter tree: nested maps, each array a msgpack ext of type 1 holding ``[shape, dtype name,
bytes]``. Both were checked once against transformers 4.46's ``TFGPT2LMHeadModel``,
``TFGPT2ForSequenceClassification`` and ``FlaxGPT2LMHeadModel``, which read these files with
logits equal to the PyTorch model's (issue 30's note).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SCOPES = {"GPT2LMHeadModel": "tfgpt2lm_head_model",
          "GPT2ForSequenceClassification": "tfgpt2_for_sequence_classification"}


def _blocks(model) -> int:
    return model.config.n_layer


def write_keras_h5(model, folder: Path) -> Path:
    """``model`` (transformers' PyTorch GPT-2, LM head or sequence classifier) as the TF class
    of the same head saves it: ``tf_model.h5`` and ``config.json``."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    state = {name.removeprefix("transformer."): tensor.float().numpy()
             for name, tensor in model.state_dict().items()}
    scope = SCOPES[type(model).__name__]
    body = {"wte/embeddings": state["wte.weight"], "wpe/embeddings": state["wpe.weight"]}
    for i in range(_blocks(model)):
        for norm in ("ln_1", "ln_2"):
            body[f"h_._{i}/{norm}/gamma"] = state[f"h.{i}.{norm}.weight"]
            body[f"h_._{i}/{norm}/beta"] = state[f"h.{i}.{norm}.bias"]
        for layer in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
            dotted = layer.replace("/", ".")
            body[f"h_._{i}/{layer}/weight"] = state[f"h.{i}.{dotted}.weight"]  # [in, out]
            body[f"h_._{i}/{layer}/bias"] = state[f"h.{i}.{dotted}.bias"][None]  # [1, out]
    body["ln_f/gamma"], body["ln_f/beta"] = state["ln_f.weight"], state["ln_f.bias"]
    layers = {"transformer": {f"{scope}/transformer/{key}:0": value
                              for key, value in body.items()}}
    if "score.weight" in state:  # a Dense kernel: [in, out]
        layers = {"score": {f"{scope}/score/kernel:0": state["score.weight"].T}, **layers}
    with h5py.File(folder / "tf_model.h5", "w") as file:
        file.attrs["backend"], file.attrs["keras_version"] = "tensorflow", "2.17.0"
        file.attrs["layer_names"] = np.array([name.encode() for name in layers])
        for layer, weights in layers.items():
            group = file.create_group(layer)
            group.attrs["weight_names"] = np.array([name.encode() for name in weights])
            for name, value in weights.items():
                group.create_dataset(name, data=np.ascontiguousarray(value))
    model.config.to_json_file(folder / "config.json")
    return folder


def write_flax_msgpack(model, folder: Path, dtype: str = "float32") -> Path:
    """``model`` (transformers' PyTorch ``GPT2LMHeadModel``) as ``FlaxGPT2LMHeadModel`` saves
    it: ``flax_model.msgpack`` (every array in ``dtype``) and ``config.json``."""
    import msgpack

    state = {name.removeprefix("transformer."): tensor.float()
             for name, tensor in model.state_dict().items()}

    def array(tensor: torch.Tensor):
        if dtype == "bfloat16":  # numpy has no bf16: its bytes, as ml_dtypes writes them
            raw = tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
        else:
            raw = tensor.numpy().astype(dtype).tobytes()
        return msgpack.ExtType(1, msgpack.packb([list(tensor.shape), dtype, raw],
                                                use_bin_type=True))

    blocks = {}
    for i in range(_blocks(model)):
        block = {norm: {"scale": array(state[f"h.{i}.{norm}.weight"]),
                        "bias": array(state[f"h.{i}.{norm}.bias"])} for norm in ("ln_1", "ln_2")}
        for group, layers in (("attn", ("c_attn", "c_proj")), ("mlp", ("c_fc", "c_proj"))):
            block[group] = {layer: {"kernel": array(state[f"h.{i}.{group}.{layer}.weight"].t()),
                                    "bias": array(state[f"h.{i}.{group}.{layer}.bias"])}
                            for layer in layers}  # FlaxConv1D's kernel: [out, in]
        blocks[str(i)] = block
    tree = {"transformer": {"h": blocks, "ln_f": {"scale": array(state["ln_f.weight"]),
                                                  "bias": array(state["ln_f.bias"])},
                            "wpe": {"embedding": array(state["wpe.weight"])},
                            "wte": {"embedding": array(state["wte.weight"])}}}
    if not model.config.tie_word_embeddings:  # a Dense kernel: [in, out]
        tree["lm_head"] = {"kernel": array(state["lm_head.weight"].t())}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flax_model.msgpack").write_bytes(msgpack.packb(tree, use_bin_type=True))
    model.config.to_json_file(folder / "config.json")
    return folder
