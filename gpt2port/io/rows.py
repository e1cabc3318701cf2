"""Tensors that are adjacent rows of one storage, seen as one tensor."""

from __future__ import annotations

import torch


def stacked_rows(parts: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """The parts, each (R, ...), as one (len(parts) * R, ...) view of the memory they share,
    when each begins where the one before ends (splits of one packed tensor); else None."""
    first = parts[0]
    storage = first.untyped_storage().data_ptr()
    step = first.shape[0] * first.stride(0) * first.element_size()
    for index, part in enumerate(parts):
        if (part.shape != first.shape or part.stride() != first.stride()
                or part.dtype != first.dtype or part.device != first.device
                or part.untyped_storage().data_ptr() != storage
                or part.data_ptr() != first.data_ptr() + index * step):
            return None
    return first.as_strided((len(parts) * first.shape[0], *first.shape[1:]), first.stride())
