"""Batch-1 decoding at the memory limit on the CPU: one token's fp32 matrix-vector products
through NumPy's OpenBLAS.

A decoding step streams every weight once, so its speed is the rate a kernel reads them. On the
CPUs measured (docs/benchmarks.md) PyTorch's MKL reads a row-major fp32 weight at 12-13 GB/s at
batch 1, one core's worth, while OpenBLAS's ``sgemv`` reads it at 26-30 GB/s on all cores. The two
thread pools contend when both spin (3x slower than either alone), so while ``streaming()`` is on,
torch runs its small per-step operations on one thread and leaves the cores to OpenBLAS.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

_active = False


def decoding(weight: torch.Tensor, batch: int) -> AbstractContextManager:
    """The context a decoding step of a model with this weight runs in: OpenBLAS for batch 1 in
    fp32 on the CPU (``streaming``), else nothing changes (MKL's half-precision kernels already
    stream at the memory limit, on all threads)."""
    if batch == 1 and weight.dtype == torch.float32 and weight.device.type == "cpu":
        return streaming()
    return nullcontext()


@contextmanager
def streaming() -> Iterator[None]:
    """Route single-token fp32 CPU products to OpenBLAS, with torch on one thread, inside."""
    global _active
    threads, was_active = torch.get_num_threads(), _active
    torch.set_num_threads(1)
    _active = True
    try:
        yield
    finally:
        _active = was_active
        torch.set_num_threads(threads)


def takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``matvec`` computes this product: one token, fp32, CPU, nothing to differentiate."""
    return (_active and x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu"
            and weight.device.type == "cpu" and x.numel() == weight.shape[1]
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def matvec(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for one token x (..., in) -> (..., out), by OpenBLAS."""
    result = weight.detach().numpy() @ x.detach().reshape(-1).numpy()  # (out,)
    if bias is not None:
        result += bias.detach().numpy()
    return torch.from_numpy(result).view(*x.shape[:-1], weight.shape[0])
