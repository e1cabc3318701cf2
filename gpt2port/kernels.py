"""Batch-1 decoding at the memory limit on the CPU: the matrix-vector kernel that reads each
dtype's weights fastest.

A decoding step streams every weight once, so its speed is the rate a kernel reads them. On the
CPUs measured (docs/benchmarks.md) PyTorch's MKL reads a row-major fp32 weight at 12-13 GB/s at
batch 1, one core's worth, while OpenBLAS's ``sgemv`` reads it at 26-30 GB/s on all cores. The two
thread pools contend when both spin (3x slower than either alone), so while ``streaming()`` is on,
torch runs its small per-step operations on one thread and leaves the cores to OpenBLAS. In bf16
oneDNN's kernel reads 10 GB/s where PyTorch's own reads 25 GB/s: ``without_onednn()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

_active = False


def decoding(weight: torch.Tensor, batch: int) -> AbstractContextManager:
    """The context a decoding step of a model with this weight runs in. For batch 1 on the CPU:
    OpenBLAS in fp32 (``streaming``), PyTorch's own kernel in bf16 (``without_onednn``); else
    nothing changes (the fp16 kernel already streams at the memory limit, on all threads)."""
    if batch != 1 or weight.device.type != "cpu":
        return nullcontext()
    if weight.dtype == torch.float32:
        return streaming()
    if weight.dtype == torch.bfloat16:
        return without_onednn()
    return nullcontext()


@contextmanager
def without_onednn() -> Iterator[None]:
    """Products by PyTorch's own CPU kernels instead of oneDNN's, inside."""
    was_enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was_enabled


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
