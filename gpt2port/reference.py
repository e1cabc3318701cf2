"""An independent GPT-2 forward pass in NumPy, on a checkpoint folder's original tensors.

It reads Hugging Face files with the safetensors library (not gpt2port's reader) and OpenAI's TF
checkpoint with the tensor-bundle reader (itself checked against TensorFlow), keeps the Conv1D
[in, out] layout, and shares no code with the model or the mapping, so agreeing with it checks
them. In the spirit of picoGPT: one line per step, shapes in comments.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .formats.huggingface import WEIGHTS_FILES


def read_original_tensors(folder: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as float32 arrays, in Hugging Face's names without prefix."""
    folder = Path(folder)
    if (folder / "hparams.json").is_file():
        return read_openai_tensors(folder)
    weights = next(folder / name for name in WEIGHTS_FILES if (folder / name).is_file())
    files = [weights]
    if weights.name.endswith(".index.json"):
        weight_map = json.loads(weights.read_text())["weight_map"]
        files = [folder / shard for shard in sorted(set(weight_map.values()))]
    arrays = {}
    for file in files:
        for name, tensor in _load(file).items():
            arrays[name.removeprefix("transformer.")] = tensor.float().numpy()
    return arrays


def read_openai_tensors(folder: Path) -> dict[str, np.ndarray]:
    """OpenAI's ``model/h0/ln_1/g`` [1, D]... as ``h.0.ln_1.weight`` [D], as picoGPT reads them."""
    from .tensor_bundle import read_bundle

    arrays = {}
    for name, tensor in read_bundle(Path(folder) / "model.ckpt").items():
        name = re.sub(r"^h(\d+)/", r"h.\1/", name.removeprefix("model/"))  # h.0/ln_1/g
        name = re.sub(r"/[wg]$", "/weight", re.sub(r"/b$", "/bias", name)).replace("/", ".")
        name = name if name.endswith(("weight", "bias")) else f"{name}.weight"  # wte, wpe
        array = tensor.float().numpy()
        arrays[name] = array[0] if array.ndim == 3 else array  # Conv1D's leading axis of 1
    return arrays


def _load(file: Path) -> dict:
    """One file's tensors, read by the safetensors library or torch (weights only)."""
    import torch
    from safetensors.torch import load_file

    if file.suffix == ".safetensors":
        return load_file(file)
    return torch.load(file, map_location="cpu", weights_only=True)


def gelu(x):  # GPT-2's tanh approximation
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def softmax(x):
    exponentials = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exponentials / np.sum(exponentials, axis=-1, keepdims=True)


def layer_norm(x, gain, bias, epsilon):  # [T, D] -> [T, D]
    mean = np.mean(x, axis=-1, keepdims=True)
    variance = np.var(x, axis=-1, keepdims=True)
    return gain * (x - mean) / np.sqrt(variance + epsilon) + bias


def attention(x, params, prefix, heads):  # [T, D] -> [T, D]
    tokens, width = x.shape
    qkv = x @ params[f"{prefix}.c_attn.weight"] + params[f"{prefix}.c_attn.bias"]  # [T, 3D]
    q, k, v = (part.reshape(tokens, heads, -1).transpose(1, 0, 2)
               for part in np.split(qkv, 3, axis=-1))  # 3 x [H, T, Dh]
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])  # [H, T, T]
    scores = scores + np.triu(np.full((tokens, tokens), -1e10, dtype=x.dtype), k=1)
    context = (softmax(scores) @ v).transpose(1, 0, 2).reshape(tokens, width)  # [T, D]
    return context @ params[f"{prefix}.c_proj.weight"] + params[f"{prefix}.c_proj.bias"]


def forward(params: dict[str, np.ndarray], hparams: dict, ids: list[int]) -> np.ndarray:
    """Logits [T, V] for one sequence of token ids."""
    epsilon, heads = hparams.get("layer_norm_epsilon", 1e-5), hparams.get("n_head", 12)
    x = params["wte.weight"][ids] + params["wpe.weight"][: len(ids)]  # [T, D]
    for i in range(hparams.get("n_layer", 12)):
        h = f"h.{i}"
        normed = layer_norm(x, params[f"{h}.ln_1.weight"], params[f"{h}.ln_1.bias"], epsilon)
        x = x + attention(normed, params, f"{h}.attn", heads)  # [T, D]
        normed = layer_norm(x, params[f"{h}.ln_2.weight"], params[f"{h}.ln_2.bias"], epsilon)
        hidden = gelu(normed @ params[f"{h}.mlp.c_fc.weight"] + params[f"{h}.mlp.c_fc.bias"])
        x = x + hidden @ params[f"{h}.mlp.c_proj.weight"] + params[f"{h}.mlp.c_proj.bias"]
    x = layer_norm(x, params["ln_f.weight"], params["ln_f.bias"], epsilon)  # [T, D]
    return x @ params.get("lm_head.weight", params["wte.weight"]).T  # [T, V]


def reference_logits(folder: Path, ids: list[int]) -> np.ndarray:
    """Logits [T, V] of the checkpoint in ``folder``, computed from its files alone."""
    folder = Path(folder)
    hparams = json.loads((folder / "config.json").read_text() if (folder / "config.json").is_file()
                         else (folder / "hparams.json").read_text())
    return forward(read_original_tensors(folder), hparams, ids)
