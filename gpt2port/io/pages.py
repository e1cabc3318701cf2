"""Handing back the pages of memory-mapped checkpoint files once their tensors have been used.

A mapped file's pages count in the process's resident memory from the first read until the
mapping goes: converting a 6 GiB checkpoint through its mapping would hold 6 GiB. ``release``
drops the pages under tensors with ``madvise(MADV_DONTNEED)``; reading them again reads the file
again (from the page cache). Only pages of file mappings holding no copy-on-write page are
dropped, so nothing written is lost and heap memory is never touched. Where the system has no
``/proc/self/smaps`` (not Linux), nothing is released.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import re
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

PAGE = mmap.PAGESIZE
DONT_NEED = getattr(mmap, "MADV_DONTNEED", None)  # None where the system has no such advice
_HEADER = re.compile(r"([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ (\d+)")


class MappedFiles:
    """The process's file mappings at one moment (``now``) that are safe to drop pages of."""

    def __init__(self, regions: list[tuple[int, int]]):
        self.regions = sorted(regions)
        self._starts = [start for start, _ in self.regions]

    @classmethod
    def now(cls) -> MappedFiles:
        try:
            with open("/proc/self/smaps", encoding="ascii", errors="replace") as smaps:
                lines = smaps.read().splitlines()
        except OSError:
            return cls([])
        regions, current = [], None
        for line in lines:
            header = _HEADER.match(line)
            if header:
                start, end, inode = int(header[1], 16), int(header[2], 16), int(header[3])
                current = (start, end) if inode else None  # inode 0: anonymous memory
            elif current and line.startswith("Anonymous:") and line.split()[1] == "0":
                regions.append(current)  # a file mapping with no page written to
        return cls(regions)

    def holds(self, tensor: torch.Tensor | np.ndarray) -> bool:
        """Whether the tensor (or array) lies in one of these file mappings."""
        return self._within(*_extent(tensor))

    def release(self, *tensors: torch.Tensor | np.ndarray) -> None:
        """Drop the pages lying wholly under each tensor (or array), where they are a file's."""
        for tensor in tensors:
            start, end = _extent(tensor)
            first, last = -(-start // PAGE) * PAGE, end // PAGE * PAGE
            if self._within(start, end) and last > first and DONT_NEED is not None:
                _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), DONT_NEED)

    def _within(self, start: int, end: int) -> bool:
        index = bisect.bisect_right(self._starts, start) - 1
        return index >= 0 and start < end <= self.regions[index][1]


@contextmanager
def released_as_used(*models: torch.nn.Module) -> Iterator[None]:
    """While the models run, each module's own parameters' file pages are handed back once the
    module has run: a forward pass holds about one block of a memory-mapped model."""
    mapped = MappedFiles.now()

    def release(module, inputs, output) -> None:
        mapped.release(*module.parameters(recurse=False))

    handles = [module.register_forward_hook(release)
               for model in models for module in model.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _extent(tensor: torch.Tensor | np.ndarray) -> tuple[int, int]:
    """The addresses [start, end) a tensor's (or array's) elements span."""
    if isinstance(tensor, np.ndarray):
        start, width, size = tensor.__array_interface__["data"][0], tensor.itemsize, tensor.size
        strides = tensor.strides
    else:
        if tensor.device.type != "cpu":
            return 0, 0
        start, width, size = tensor.data_ptr(), tensor.element_size(), tensor.numel()
        strides = [stride * width for stride in tensor.stride()]
    if size == 0 or any(stride < 0 for stride in strides):
        return 0, 0
    span = sum((length - 1) * stride for length, stride in zip(tensor.shape, strides,
                                                                strict=True))
    return start, start + span + width


_LIBC = ctypes.CDLL(None, use_errno=True)
