"""An independent GPT-2 forward pass in NumPy, on a checkpoint's original tensors.

Each format reads its own files for it by code that does not use its mapping table
(``Format.reference_tensors``: the safetensors library, ``torch.load``, the gguf package, NumPy
on llm.c's bytes...) and renames them to GPT-2's Conv1D names by hand. This pass keeps the Conv1D
[in, out] layout and shares no code with the model or the mapping, so agreeing with it checks
them. In the spirit of picoGPT: one line per step, shapes in comments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..formats import recognise


def gelu(x):  # GPT-2's tanh approximation (transformers' gelu_new; gelu_fast is this too)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def exact_gelu(x):  # x * Phi(x), with the error function itself (nanoGPT's nn.GELU())
    return 0.5 * x * (1 + np.vectorize(math.erf, otypes=[x.dtype])(x / np.sqrt(2)))


ACTIVATIONS = {  # what a config's activation names, as transformers computes it
    "gelu_fast": gelu,
    "quick_gelu": lambda x: x / (1 + np.exp(-1.702 * x)),
    "relu": lambda x: np.maximum(x, 0),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "mish": lambda x: x * np.tanh(np.logaddexp(0, x)),
    "relu6": lambda x: np.clip(x, 0, 6),
    "linear": lambda x: x,
}


def softmax(x):
    exponentials = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exponentials / np.sum(exponentials, axis=-1, keepdims=True)


def layer_norm(x, gain, bias, epsilon):  # [T, D] -> [T, D]
    mean = np.mean(x, axis=-1, keepdims=True)
    variance = np.var(x, axis=-1, keepdims=True)
    return gain * (x - mean) / np.sqrt(variance + epsilon) + bias


def attention(x, params, prefix, heads, scale):  # [T, D] -> [T, D]
    tokens, width = x.shape
    qkv = x @ params[f"{prefix}.c_attn.weight"] + params.get(f"{prefix}.c_attn.bias", 0)  # [T, 3D]
    q, k, v = (part.reshape(tokens, heads, -1).transpose(1, 0, 2)
               for part in np.split(qkv, 3, axis=-1))  # 3 x [H, T, Dh]
    scores = q @ k.transpose(0, 2, 1) * scale  # [H, T, T]
    scores = scores + np.triu(np.full((tokens, tokens), -1e10, dtype=x.dtype), k=1)
    context = (softmax(scores) @ v).transpose(1, 0, 2).reshape(tokens, width)  # [T, D]
    return context @ params[f"{prefix}.c_proj.weight"] + params.get(f"{prefix}.c_proj.bias", 0)


def forward(params: Mapping[str, np.ndarray], config: dict, ids: list[int]) -> np.ndarray:
    """Logits [T, V] for one sequence of token ids; a missing bias counts as zero."""
    return head_logits(params, hidden_states(params, config, ids))


def head_logits(params: Mapping[str, np.ndarray], hidden: np.ndarray) -> np.ndarray:
    """The output head on ``hidden_states``' output [T, D]: logits [T, V]."""
    head = params["lm_head.weight" if "lm_head.weight" in params else "wte.weight"]  # [V|C, D]
    return hidden @ head.T + params.get("lm_head.bias", 0)  # [T, V]


def choice_scores(params: Mapping[str, np.ndarray], config: dict, hidden: np.ndarray
                  ) -> np.ndarray:
    """A multiple-choice head's scores [K] for one choice, read at its last token of
    ``hidden_states``' output (as transformers' SequenceSummary with ``summary_type="cls_index"``
    and no ``mc_token_ids``)."""
    scores = hidden[-1] @ params["choice.weight"].T + params["choice.bias"]  # [K]
    return np.tanh(scores) if config["choice_activation"] == "tanh" else scores


def hidden_states(params: Mapping[str, np.ndarray], config: dict, ids: list[int]
                  ) -> np.ndarray:
    """The final layer norm's output [T, D], which the heads read."""
    epsilon, heads = config["layer_norm_epsilon"], config["number_of_heads"]
    activation = (ACTIVATIONS[config["activation"]] if config["activation"] != "gelu"
                  else exact_gelu if config["gelu_approximation"] == "none" else gelu)
    head_width = config["embedding_dimension"] // heads
    x = params["wte.weight"][ids] + params["wpe.weight"][: len(ids)]  # [T, D]
    for i in range(config["number_of_layers"]):
        h = f"h.{i}"
        normed = layer_norm(x, params[f"{h}.ln_1.weight"], params.get(f"{h}.ln_1.bias", 0),
                            epsilon)
        scale = (head_width ** -0.5 if config["attention_scaled_by_head_width"] else 1.0) / (
            i + 1 if config["attention_scaled_by_layer"] else 1)
        x = x + attention(normed, params, f"{h}.attn", heads, scale)  # [T, D]
        normed = layer_norm(x, params[f"{h}.ln_2.weight"], params.get(f"{h}.ln_2.bias", 0),
                            epsilon)
        hidden = activation(normed @ params[f"{h}.mlp.c_fc.weight"]
                            + params.get(f"{h}.mlp.c_fc.bias", 0))  # [T, F]
        x = x + hidden @ params[f"{h}.mlp.c_proj.weight"] + params.get(f"{h}.mlp.c_proj.bias", 0)
    return layer_norm(x, params["ln_f.weight"], params.get("ln_f.bias", 0), epsilon)  # [T, D]


def reference_logits(path: Path, ids: list[int], *, source_format=None) -> np.ndarray:
    """Logits [T, V] of the checkpoint at ``path`` (any format, recognised unless
    ``source_format`` says it), computed from its files alone."""
    source_format = source_format or recognise(Path(path))
    arrays, config = source_format.reference_tensors(Path(path))
    return forward(arrays, config, ids)
