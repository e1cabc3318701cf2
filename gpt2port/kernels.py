"""The kernel a decoding step computes its products with: at batch 1 on the CPU, the one that
reads each dtype's weights fastest.

A decoding step streams every weight once, so its speed is the rate a kernel reads them. On the
CPUs measured (docs/benchmarks.md) PyTorch's MKL reads a row-major fp32 weight at 10-13 GB/s at
batch 1, while NumPy's OpenBLAS ``sgemv`` reads it at 15-30 GB/s. In bf16 oneDNN's kernel behind
``F.linear`` read 10 GB/s on one CPU where PyTorch's own matrix-vector kernel (``torch.mv``) read
25 GB/s. The choice is a plain function the caller holds: no flag of torch's or of this module
changes, so other threads' products are untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def for_decoding(weight: torch.Tensor, batch: int) -> Product:
    """The product for one-token steps of a model with this weight: OpenBLAS in fp32 and
    PyTorch's own matrix-vector kernel in bf16 at batch 1 on the CPU; ``F.linear`` elsewhere
    (the fp16 kernel already streams at the memory limit)."""
    if batch != 1 or weight.device.type != "cpu":
        return F.linear
    if weight.dtype == torch.float32:
        return openblas_matvec
    if weight.dtype == torch.bfloat16:
        return torch_matvec
    return F.linear


def openblas_matvec(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                    ) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for one fp32 token x (..., in) -> (..., out), by OpenBLAS."""
    result = weight.detach().numpy() @ x.detach().reshape(-1).numpy()  # (out,)
    if bias is not None:
        result += bias.detach().numpy()
    return torch.from_numpy(result).view(*x.shape[:-1], weight.shape[0])


def torch_matvec(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                 ) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for one token, by ``torch.mv`` (not oneDNN's kernel)."""
    result = torch.mv(weight, x.reshape(-1))  # (out,)
    if bias is not None:
        result += bias
    return result.view(*x.shape[:-1], weight.shape[0])
