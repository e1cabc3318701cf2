"""ONNX model files, their weights one tensor at a time.

Writing: the model and its graph without weights come serialized (by the onnx package); each
initializer is appended as the graph's field 5 from a ``TensorStream``, its header encoded here
and its bytes written as the tensor is made, either inside the ``.onnx`` file or, past
protobuf's 2 GiB, in one ``.onnx_data`` file beside it (ONNX's external data). Reading: the
initializers found in the memory-mapped file, each a view of its bytes (or of the external data
file's), without the onnx package.
"""

from __future__ import annotations

import mmap
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, unreadable
from .protobuf import LENGTH_DELIMITED, field, fields, header, read_varint
from .writers import tensor_bytes

PROTOBUF_LIMIT = 2**31 - 1  # bytes a protobuf message may hold
# ONNX's TensorProto.DataType codes
DATA_TYPES = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16, torch.float64: 11}
TORCH_DTYPES = {code: dtype for dtype, code in DATA_TYPES.items()}
MODEL_GRAPH, GRAPH_INITIALIZER, MODEL_PRODUCER = 7, 5, 2
# TensorProto's fields
DIMS, DATA_TYPE, NAME, RAW_DATA, EXTERNAL_DATA, DATA_LOCATION = 1, 2, 8, 9, 13, 14
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def _tensor_header(name: str, shape: tuple[int, ...], dtype: torch.dtype, size: int,
                   external: tuple[str, int] | None) -> bytes:
    """A TensorProto up to its data: the raw bytes' field header, or the external data's
    location, offset and length."""
    encoded = b"".join(field(DIMS, each) for each in shape)
    encoded += field(DATA_TYPE, DATA_TYPES[dtype]) + field(NAME, name.encode())
    if external is None:
        return encoded + header(RAW_DATA, size)
    location, offset = external
    entries = {"location": location, "offset": str(offset), "length": str(size)}
    encoded += b"".join(field(EXTERNAL_DATA, field(1, key.encode()) + field(2, value.encode()))
                        for key, value in entries.items())
    return encoded + field(DATA_LOCATION, EXTERNAL)


def write_onnx(path: Path, model: bytes, graph: bytes, tensors, names: dict[str, str]) -> bool:
    """Write ``model`` (a serialized ModelProto without its graph) with ``graph`` (a serialized
    GraphProto without initializers) and a ``TensorStream``'s tensors as initializers named
    ``names[name]``, each written as it is made. Returns whether the weights went to
    ``path.name + "_data"`` (past protobuf's limit)."""
    size = tensors.dtype.itemsize
    sizes = {name: int(np.prod(shape, dtype=np.int64)) * size
             for name, shape in tensors.shapes.items()}
    external = sum(sizes.values()) + len(graph) + len(model) > PROTOBUF_LIMIT - 2**20
    data_name = f"{path.name}_data"
    heads, offset = {}, 0
    for name, shape in tensors.shapes.items():
        heads[name] = _tensor_header(names[name], shape, tensors.dtype, sizes[name],
                                     (data_name, offset) if external else None)
        offset += sizes[name]
    inside = {name: len(head) + (0 if external else sizes[name]) for name, head in heads.items()}
    graph_length = len(graph) + sum(len(header(GRAPH_INITIALIZER, length)) + length
                                    for length in inside.values())
    with ExitStack() as files:
        file = files.enter_context(open(path, "wb"))
        data = files.enter_context(open(path.parent / data_name, "wb")) if external else file
        file.write(model + header(MODEL_GRAPH, graph_length) + graph)
        for name, shape in tensors.shapes.items():
            file.write(header(GRAPH_INITIALIZER, inside[name]) + heads[name])
            tensor = tensors[name]
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != tensors.dtype:
                raise ValueError(f"tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, "
                                 f"the layout says {tensors.dtype} {list(shape)}")
            data.write(tensor_bytes(tensor))
    return external


def _mapped(path: Path) -> mmap.mmap:
    try:
        with open(path, "rb") as file:
            if file.seek(0, 2) == 0:
                raise CheckpointError(f"{path}: the file is empty")
            return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    except OSError as error:
        raise unreadable(path, error) from None


def read_onnx(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The initializers of an ONNX model file (views of the mapped file or of its external data
    files, which must lie in its folder) and its producer's name.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    path = Path(path)
    buffer = _mapped(path)
    tensors, producer, files = {}, "", {}
    try:
        for number, wire, value, stop in fields(buffer):
            if number == MODEL_PRODUCER and wire == LENGTH_DELIMITED:
                producer = bytes(buffer[value:stop]).decode("utf-8", "replace")
            elif number == MODEL_GRAPH and wire == LENGTH_DELIMITED:
                for inner, kind, start, end in fields(buffer, value, stop):
                    if inner == GRAPH_INITIALIZER and kind == LENGTH_DELIMITED:
                        name, tensor = _initializer(path, buffer, start, end, files)
                        tensors[name] = tensor
    except ValueError as error:
        raise CheckpointError(f"{path}: not an ONNX model file ({error})",
                              hint="the file is damaged or truncated: write it again") from None
    return tensors, producer


def _initializer(path: Path, buffer, start: int, end: int, files: dict
                 ) -> tuple[str, torch.Tensor]:
    shape, code, name, raw, external, location = [], None, None, None, {}, 0
    for number, wire, value, stop in fields(buffer, start, end):
        if number == DIMS and wire == 0:
            shape.append(value)
        elif number == DIMS and wire == LENGTH_DELIMITED:  # packed
            position = value
            while position < stop:
                each, position = read_varint(buffer, position)
                shape.append(each)
        elif number == DATA_TYPE and wire == 0:
            code = value
        elif number == NAME and wire == LENGTH_DELIMITED:
            name = bytes(buffer[value:stop]).decode("utf-8", "replace")
        elif number == RAW_DATA and wire == LENGTH_DELIMITED:
            raw = (value, stop)
        elif number == EXTERNAL_DATA and wire == LENGTH_DELIMITED:
            entry = {key: bytes(buffer[inner:inner_stop]).decode("utf-8", "replace")
                     for key, kind, inner, inner_stop in fields(buffer, value, stop)
                     if kind == LENGTH_DELIMITED}
            external[entry.get(1, "")] = entry.get(2, "")
        elif number == DATA_LOCATION and wire == 0:
            location = value
    if name is None:
        raise ValueError("an initializer without a name")
    dtype = TORCH_DTYPES.get(code)
    if dtype is None:
        raise CheckpointError(f"{path}: initializer {name!r} has ONNX data type {code}, not a "
                              "float type gpt2port reads")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    size = count * dtype.itemsize
    if location == EXTERNAL:
        source, begin = _external(path, name, external, size, files)
    elif raw is not None:
        source, begin = buffer, raw[0]
        if raw[1] - raw[0] != size:
            raise ValueError(f"{name}: shape {shape} needs {size} bytes, raw_data holds "
                             f"{raw[1] - raw[0]}")
    else:
        raise CheckpointError(f"{path}: initializer {name!r} keeps its values in typed fields, "
                              "not raw bytes", hint="gpt2port reads the ONNX files it writes")
    if count == 0:
        return name, torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(source, dtype=torch.uint8, count=size, offset=begin)
    if begin % dtype.itemsize:
        flat = flat.clone()  # misaligned data cannot be viewed as wider elements in place
    return name, flat.view(dtype).view(shape)


def _external(path: Path, name: str, entry: dict, size: int, files: dict):
    """The mapped external data file an initializer names, and where its bytes start."""
    location = entry.get("location", "")
    target = (path.parent / location).resolve()
    if not location or target.parent != path.parent.resolve():
        raise CheckpointError(f"{path}: initializer {name!r} keeps its data in {location!r}, "
                              "not a file beside the model", hint="keep the .onnx_data file "
                              "beside the .onnx file")
    try:
        offset, length = int(entry.get("offset", "0")), int(entry.get("length", size))
    except ValueError:
        raise ValueError(f"{name}: its external offset or length is not a number") from None
    if target not in files:
        if not target.is_file():
            raise CheckpointError(f"{path}: initializer {name!r} keeps its data in {location}, "
                                  "which is missing", hint="copy the .onnx_data file too")
        files[target] = _mapped(target)
    if length != size or offset < 0 or offset + size > len(files[target]):
        raise ValueError(f"{name}: its external data ({offset}, {length}) does not fit "
                         f"{location} or its shape")
    return files[target], offset
