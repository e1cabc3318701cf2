"""A checkpoint's tensors as NumPy arrays, each read when looked up: what the reference runs on."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .pages import MappedFiles


class Arrays(Mapping):
    """A checkpoint's tensors for the pass, under GPT-2's names, each made when looked up and
    not kept (the pass holds about one block): ``makers`` give each as float32, and one that is
    a view of a mapped file is copied and its pages handed back."""

    def __init__(self, makers: Mapping[str, Callable[[], np.ndarray]]):
        self._makers, self._mapped = dict(makers), MappedFiles.now()

    def __getitem__(self, name: str) -> np.ndarray:
        array = np.asarray(self._makers[name](), dtype=np.float32)
        if not self._mapped.holds(array):
            return array
        copy = array.copy()
        self._mapped.release(array)
        return copy

    def __contains__(self, name: object) -> bool:
        return name in self._makers

    def __iter__(self):
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)
