"""The kernels a decoding step computes its products with: at batch 1 on the CPU, the ones that
read each dtype's weights fastest.

A decoding step streams every weight once, so its speed is the rate a kernel reads them. On the
CPUs measured (docs/benchmarks.md) PyTorch's MKL reads a row-major fp32 weight at 10-13 GB/s at
batch 1, while NumPy's OpenBLAS ``sgemv`` reads it at 15-30 GB/s; OpenBLAS's threads and torch's
OpenMP threads contend when both spin (3x slower than either alone), so during an fp32 step the
calling thread runs torch's small operations on one OpenMP thread. In bf16 oneDNN's kernel behind
``F.linear`` read 10 GB/s on one CPU where PyTorch's own matrix-vector kernel (``torch.mv``) read
25 GB/s.

Nothing here is visible to another thread: the choice is a ``StepKernel`` the decoder holds, and
the thread count is the calling thread's own OpenMP setting (``omp_set_num_threads`` is per thread;
``torch.set_num_threads`` would also change what threads started later get). Where that setting
cannot be reached (no OpenMP runtime found), fp32 steps keep ``F.linear``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
OPENMP_RUNTIMES = ("libgomp", "libiomp5", "libomp")


@dataclass(frozen=True)
class StepKernel:
    """How a one-token step computes its products, and how many OpenMP threads the calling
    thread gives torch's other operations meanwhile (None: as they are)."""

    product: Product
    torch_threads: int | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        """The step's thread setting, for the calling thread only, given back after."""
        runtime = openmp() if self.torch_threads is not None else None
        if runtime is None:
            yield
            return
        threads = runtime.omp_get_max_threads()
        runtime.omp_set_num_threads(self.torch_threads)
        try:
            yield
        finally:
            runtime.omp_set_num_threads(threads)


def for_decoding(weight: torch.Tensor, batch: int) -> StepKernel:
    """The kernel for one-token steps of a model with this weight: OpenBLAS in fp32 and
    PyTorch's own matrix-vector kernel in bf16 at batch 1 on the CPU; ``F.linear`` elsewhere
    (the fp16 kernel already streams at the memory limit)."""
    if batch != 1 or weight.device.type != "cpu":
        return StepKernel(F.linear)
    if weight.dtype == torch.float32 and openmp() is not None:
        return StepKernel(openblas_matvec, torch_threads=1)
    if weight.dtype == torch.bfloat16:
        return StepKernel(torch_matvec)
    return StepKernel(F.linear)


@cache
def openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime torch's CPU operations run on (already loaded by torch), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return None
    torch_libraries = Path(torch.__file__).parent / "lib"  # another package may bring its own
    found = sorted((Path(path).parent != torch_libraries, path) for path in paths
                   if Path(path).name.startswith(OPENMP_RUNTIMES))
    found = [path for _, path in found]
    try:
        return ctypes.CDLL(found[0]) if found else None
    except OSError:
        return None


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
