"""The model's structure without memory or initialisation, for weights that are assigned after.

Built on the meta device (shapes only) inside a ``TorchFunctionMode`` that skips ``torch.nn.init``:
both are torch's thread-local modes, so a layer another thread builds meanwhile is initialised as
usual. (On the meta device the random init alone costs 1.3-6 s the first time: it imports torch's
Python meta kernels.)
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from .model import GPTModel


class _WithoutInitialisation(TorchFunctionMode):
    """``torch.nn.init``'s functions return their tensor untouched; everything else runs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def empty_model(config: dict) -> GPTModel:
    """The model of ``config`` on the meta device: shapes only, no memory, no initialisation."""
    with torch.device("meta"), _WithoutInitialisation():
        return GPTModel(config)
