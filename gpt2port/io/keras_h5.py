"""Keras's ``tf_model.h5`` (what transformers' TF classes save) read with h5py, without
TensorFlow: the root's ``layer_names``, each layer group's ``weight_names``, one dataset each.
A contiguous, uncompressed dataset is a view of the memory-mapped file; any other is read into
memory on its own.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, unreadable

HINT = "pip install h5py (or gpt2port[tensorflow]): it reads Keras's .h5 files"
DTYPES = {np.dtype("<f4"): torch.float32, np.dtype("<f2"): torch.float16,
          np.dtype("<f8"): torch.float64}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise CheckpointError("reading tf_model.h5 needs the h5py package", hint=HINT) from None
    return h5py


def read_keras_h5(path: Path) -> dict[str, torch.Tensor]:
    """Every weight of a Keras h5 file under its Keras name
    (``tfgpt2lm_head_model/transformer/h_._0/attn/c_attn/weight:0``).

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    h5py, path = _h5py(), Path(path)
    try:
        with open(path, "rb") as file:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        with h5py.File(path, "r") as found:
            return {name: _tensor(path, name, dataset, mapped)
                    for name, dataset in _weights(path, found)}
    except (OSError, ValueError, KeyError, TypeError) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise unreadable(path, error) from None
        raise CheckpointError(f"{path}: not a Keras h5 weights file ({error})",
                              hint="the file is damaged or truncated: download it again"
                              ) from None


def _weights(path: Path, found):
    """(Keras name, dataset) of each weight, in the order the layers list them."""
    h5py = _h5py()
    layers = found.attrs.get("layer_names")
    if layers is None:
        raise CheckpointError(f"{path}: an h5 file without Keras's layer_names",
                              hint="transformers' TF classes save tf_model.h5 with "
                              "save_pretrained; this is another kind of h5 file")
    for layer in layers:
        layer = layer.decode() if isinstance(layer, bytes) else str(layer)
        group = found.get(layer)
        if not isinstance(group, h5py.Group):
            raise CheckpointError(f"{path}: layer_names lists {layer!r}, which is not a group")
        for name in group.attrs.get("weight_names", []):
            name = name.decode() if isinstance(name, bytes) else str(name)
            dataset = group.get(name)
            if not isinstance(dataset, h5py.Dataset):
                raise CheckpointError(f"{path}: {layer!r} lists the weight {name!r}, which is "
                                      "not in the file")
            yield name, dataset


def _tensor(path: Path, name: str, dataset, mapped: mmap.mmap) -> torch.Tensor:
    dtype = DTYPES.get(dataset.dtype)
    if dtype is None:
        raise CheckpointError(f"{path}: {name} is {dataset.dtype}, not a float type gpt2port "
                              "reads")
    shape = tuple(dataset.shape)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    offset = dataset.id.get_offset()
    if (dataset.chunks is None and dataset.compression is None and offset is not None
            and offset + size <= len(mapped) and offset % dtype.itemsize == 0 and size):
        flat = torch.frombuffer(mapped, dtype=torch.uint8, count=size, offset=offset)
        return flat.view(dtype).view(shape)
    return torch.from_numpy(np.ascontiguousarray(dataset[()]))
