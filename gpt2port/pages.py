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

import torch

PAGE = mmap.PAGESIZE
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

    def release(self, *tensors: torch.Tensor) -> None:
        """Drop the pages lying wholly under each tensor, where they are a file's."""
        for tensor in tensors:
            start, end = _extent(tensor)
            index = bisect.bisect_right(self._starts, start) - 1
            if index < 0 or end > self.regions[index][1] or start >= end:
                continue
            first, last = -(-start // PAGE) * PAGE, end // PAGE * PAGE
            if last > first:
                _madvise(first, last - first)


def _extent(tensor: torch.Tensor) -> tuple[int, int]:
    """The addresses [start, end) a tensor's elements span."""
    if tensor.numel() == 0 or tensor.device.type != "cpu" or any(s < 0 for s in tensor.stride()):
        return 0, 0
    span = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(),
                                                            strict=True)) + 1
    start = tensor.data_ptr()
    return start, start + span * tensor.element_size()


def _madvise(address: int, length: int) -> None:
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is not None:
        _LIBC.madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), advice)


_LIBC = ctypes.CDLL(None, use_errno=True)
