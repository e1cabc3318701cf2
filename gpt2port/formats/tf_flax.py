"""transformers' TensorFlow (``tf_model.h5``) and Flax (``flax_model.msgpack``) weights under
the names and layouts of its PyTorch GPT-2, so that the Hugging Face format's table reads them.

Keras names a weight ``<model scope>/transformer/h_._0/attn/c_attn/weight:0``: layer norms hold
``gamma``/``beta``, embeddings ``embeddings``, a ``Dense`` head a ``kernel`` [in, out]; GPT-2's
Conv1D keeps [in, out] and a bias [1, out]. Flax nests ``transformer/h/0/attn/c_attn/kernel``:
norms hold ``scale``, embeddings ``embedding``, and every ``kernel`` is the transpose of its
PyTorch weight (Conv1D's [out, in], Dense's [in, out]). Each tensor stays a view.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..io.flax_msgpack import read_flax_msgpack
from ..io.keras_h5 import read_keras_h5
from ..io.readers import read_weights_file

TF_WEIGHTS, FLAX_WEIGHTS = "tf_model.h5", "flax_model.msgpack"
TF_LEAVES = {"gamma": "weight", "beta": "bias", "embeddings": "weight", "weight": "weight",
             "bias": "bias", "kernel": "weight"}
FLAX_LEAVES = {"scale": "weight", "bias": "bias", "embedding": "weight", "kernel": "weight"}


def read_framework_weights(path: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face weights file of any framework, under transformers' PyTorch names."""
    path = Path(path)
    if path.suffix == ".h5":
        return from_keras(read_keras_h5(path))
    if path.suffix == ".msgpack":
        return from_flax(read_flax_msgpack(path))
    return read_weights_file(path)


def from_keras(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keras names -> PyTorch names; a Dense kernel transposed, a [1, out] bias flattened."""
    found = {}
    for name, tensor in tensors.items():
        *path, leaf = name.removesuffix(":0").split("/")[1:]  # without the model's scope
        path = re.sub(r"\bh_\._(\d+)\b", r"h.\1", ".".join(path))
        if leaf == "kernel" and tensor.dim() == 2:
            tensor = tensor.t()
        if leaf == "bias" and tensor.dim() == 2 and tensor.shape[0] == 1:
            tensor = tensor[0]
        found[f"{path}.{TF_LEAVES.get(leaf, leaf)}"] = tensor
    return found


def from_flax(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flax paths -> PyTorch names; every kernel transposed."""
    found = {}
    for name, tensor in tensors.items():
        path, _, leaf = name.rpartition(".")
        if leaf == "kernel" and tensor.dim() == 2:
            tensor = tensor.t()
        found[f"{path}.{FLAX_LEAVES.get(leaf, leaf)}"] = tensor
    return found


# --- what the NumPy reference reads with: h5py's own dataset reads and the msgpack package ---


def framework_later(path: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """Makers of each tensor of a TF or Flax weights file under PyTorch's names and layouts,
    read by h5py (a dataset when called) or the msgpack package, and their shapes: code apart
    from the loader's readers.

    Raises:
        CheckpointError: when the package that reads the file is not installed.
    """
    return _keras_later(path) if path.suffix == ".h5" else _flax_later(path)


def _keras_later(path: Path) -> tuple[dict, dict]:
    import h5py

    makers, shapes = {}, {}
    with h5py.File(path, "r") as file:
        for layer in file.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            group = file[layer]
            for weight in group.attrs["weight_names"]:
                weight = weight.decode() if isinstance(weight, bytes) else str(weight)
                parts = weight.split(":")[0].split("/")[1:]
                leaf = parts.pop()
                name = re.sub(r"h_\._", "h.", ".".join(parts)) + "." + TF_LEAVES[leaf]
                shape = group[weight].shape
                flip = leaf == "kernel"
                makers[name] = (lambda key=f"{layer}/{weight}", flip=flip: _h5_array(
                    path, key, flip))
                shapes[name] = (tuple(reversed(shape)) if flip else
                                shape[1:] if leaf == "bias" and len(shape) == 2 else shape)
    return makers, shapes


def _h5_array(path: Path, key: str, flip: bool):
    import h5py

    with h5py.File(path, "r") as file:
        array = file[key][()].astype("float32")
    if flip:  # a Dense kernel
        return array.T
    if key.endswith("bias:0") and array.ndim == 2 and array.shape[0] == 1:  # a Conv1D bias
        return array[0]
    return array


def _flax_later(path: Path) -> tuple[dict, dict]:
    try:
        import msgpack
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError(f"{path}: the NumPy reference reads Flax files with the msgpack "
                          "package", hint="pip install msgpack") from None
    import numpy as np

    def array(code: int, data: bytes):
        shape, dtype, raw = msgpack.unpackb(data)
        if dtype == "bfloat16":
            bits = np.frombuffer(raw, dtype="<u2").astype("<u4") << 16
            return bits.view("<f4").reshape(shape)
        return np.frombuffer(raw, dtype=dtype).astype("float32").reshape(shape)

    tree = msgpack.unpackb(Path(path).read_bytes(), ext_hook=array, strict_map_key=False)
    makers, shapes = {}, {}

    def walk(node: dict, names: list[str]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, [*names, key])
                continue
            flip = key == "kernel"
            name = ".".join([*names, FLAX_LEAVES[key]])
            makers[name] = (lambda value=value, flip=flip: value.T if flip else value)
            shapes[name] = value.T.shape if flip else value.shape

    walk(tree, [])
    return makers, shapes
