"""A PEFT LoRA adapter applied to the reference's arrays, by code of its own: the adapter file
read by the safetensors library (or ``torch.load``), its names matched by hand, each weight
changed when the reference looks it up. Not the loader's merge (``adapters.lora``)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..formats.base import safetensors_later, torch_loaded
from ..formats.huggingface import HEADS
from ..io.arrays import Arrays

LORA = re.compile(r"^(?:base_model\.model\.)?(?:transformer\.)?(.+?)\."
                  r"(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight|\.bias)?$")


def adapter_arrays(folder: Path) -> dict[str, Callable[[], np.ndarray]]:
    """The adapter file's tensors as makers of float32 arrays, under their saved names."""
    path = folder / "adapter_model.safetensors"
    if path.is_file():
        return safetensors_later(path)[0]
    state = torch_loaded(folder / "adapter_model.bin")
    return {name: (lambda tensor=tensor: tensor.float().numpy()) for name, tensor in state.items()}


def with_adapter(arrays: Arrays, config: dict, folder: Path) -> Arrays:
    """``arrays`` (GPT-2's Conv1D names, [in, out]) with the adapter in ``folder`` applied:
    ``W += scale * (B @ A)ᵀ`` for a Conv1D layer, ``+= scale * B @ A`` for ``lm_head``
    ([V, D]), ``+= scale * (B @ A)ᵀ`` for an embedding; saved full tensors replace the base's
    (a task's head as the reference's ``lm_head``). ``config``: the merged model's."""
    settings = json.loads((folder / "adapter_config.json").read_text())
    saved = adapter_arrays(folder)
    makers = {name: (lambda name=name: arrays[name]) for name in arrays}
    if not config["tie_output_head"] and "lm_head.weight" not in makers:
        makers["lm_head.weight"] = makers["wte.weight"]  # the head, before the adapter
    pairs: dict[str, dict[str, Callable]] = {}
    for name, maker in saved.items():
        found = LORA.match(name)
        if found:
            kind = found[2].replace("embedding_", "") + (".bias" if name.endswith(".bias")
                                                         else "")
            pairs.setdefault(found[1], {})[kind] = maker
            continue
        short = re.sub(r"^(base_model\.model\.)?(transformer\.)?", "", name)
        short = short.replace(".base_layer.", ".")
        head = HEADS[config["task"]]
        if short.startswith(f"{head}."):
            short = "lm_head." + short.removeprefix(f"{head}.")
        makers[short] = maker
    for module, parts in pairs.items():
        rank = parts["lora_A"]().shape[0]
        alpha = settings.get("lora_alpha", 8)
        for pattern, value in (settings.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = value
                break
        scale = alpha / (math.sqrt(rank) if settings.get("use_rslora") else rank)
        weight = f"{module}.weight"
        linear = module == "lm_head"  # nn.Linear [out, in]; Conv1D and embeddings are [in|V, ..]
        makers[weight] = _plus(makers[weight], parts["lora_A"], parts["lora_B"], scale, linear)
        if "lora_B.bias" in parts:
            bias = f"{module}.bias"
            before, extra = makers[bias], parts["lora_B.bias"]
            makers[bias] = lambda before=before, extra=extra, scale=scale: (
                before() + scale * extra())
    return Arrays(makers)


def _plus(weight: Callable, down: Callable, up: Callable, scale: float, linear: bool
          ) -> Callable[[], np.ndarray]:
    def made() -> np.ndarray:
        delta = scale * (up() @ down())  # [out, in] (an embedding's [D, V])
        return weight() + (delta if linear else delta.T)
    return made
