"""A model's tensors as a format writes them, made one at a time.

``TensorStream`` is a read-only mapping of the format's tensor names: each tensor's shape and
dtype are known from the config before any is made (``shapes``, ``dtype``), so a writer can lay
out a header first; each value is made when asked for (the model's tensors converted to the
dtype, then laid out by the table's transform), and asking for the next hands back the source
file's pages under the one before (``pages.MappedFiles``). A writer that writes each tensor as
it gets it holds about one tensor beside what it writes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from ..io.pages import MappedFiles
from .table import MappingTable, applicable_rules, source_shapes


class TensorStream(Mapping):
    """``name -> tensor`` in the format's names, layout and ``dtype`` (None: each tensor's
    own), made on access."""

    def __init__(self, table: MappingTable, state: Mapping[str, torch.Tensor], config: dict,
                 dtype: torch.dtype | None = None):
        rules, expected = applicable_rules(table, config)
        self.shapes = source_shapes(rules, expected)  # in the table's order
        self.dtype = dtype
        self._rules = {name: (rule, index) for rule in rules
                       for index, name in enumerate(rule.source)}
        self._state = state
        self._mapped = MappedFiles.now()
        self._used: list[torch.Tensor] = []

    def __getitem__(self, name: str) -> torch.Tensor:
        rule, index = self._rules[name]
        self.release()
        inputs = [self._state[target] for target in rule.target]
        self._used = inputs
        return rule.transform.from_model([tensor.detach().to(self.dtype or tensor.dtype)
                                          for tensor in inputs])[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def release(self) -> None:
        """Hand back the source pages of the tensors last made."""
        self._mapped.release(*self._used)
        self._used = []
