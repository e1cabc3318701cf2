"""The mapping engine: applies a format's name table in either direction.

A table is data: rules that pair a checkpoint's tensor names with the model's, each with a
transform that knows both directions. ``{}`` in a name stands for the block index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import MappingError


class Transform:
    """Turns a checkpoint's tensors into the model's (``to_model``) and back (``from_model``)."""

    description = "as is"

    def to_model(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return tensors

    def from_model(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return tensors

    def from_model_shapes(self, shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """What ``from_model`` does to shapes (checks a checkpoint without touching tensors)."""
        return shapes


class Transpose(Transform):
    """Swaps the two axes, e.g. Conv1D's [in, out] and Linear's [out, in]."""

    description = "transpose"

    def to_model(self, tensors):
        return [tensor.t() for tensor in tensors]

    from_model = to_model

    def from_model_shapes(self, shapes):
        return [tuple(reversed(shape)) for shape in shapes]


class Split(Transform):
    """One tensor packing several along ``dim`` (q|k|v) becomes equal parts, and back."""

    def __init__(self, parts: int, dim: int = 0):
        self.parts, self.dim = parts, dim
        self.description = f"split in {parts} along dim {dim}"

    def to_model(self, tensors):
        (packed,) = tensors
        return list(packed.chunk(self.parts, self.dim))

    def from_model(self, tensors):
        return [torch.cat(tensors, self.dim)]

    def from_model_shapes(self, shapes):
        packed = list(shapes[0])
        packed[self.dim] = sum(shape[self.dim] for shape in shapes)
        return [tuple(packed)]


class Squeeze(Transform):
    """Drops a leading axis of size 1, and adds it back."""

    def __init__(self, dim: int = 0):
        self.dim = dim
        self.description = f"drop axis {dim}"

    def to_model(self, tensors):
        return [tensor.squeeze(self.dim) for tensor in tensors]

    def from_model(self, tensors):
        return [tensor.unsqueeze(self.dim) for tensor in tensors]

    def from_model_shapes(self, shapes):
        return [shape[:self.dim] + (1,) + shape[self.dim:] for shape in shapes]


class Chain(Transform):
    """Several transforms in order; ``from_model`` runs them in reverse."""

    def __init__(self, *steps: Transform):
        self.steps = steps
        self.description = ", then ".join(step.description for step in steps)

    def to_model(self, tensors):
        for step in self.steps:
            tensors = step.to_model(tensors)
        return tensors

    def from_model(self, tensors):
        for step in reversed(self.steps):
            tensors = step.from_model(tensors)
        return tensors

    def from_model_shapes(self, shapes):
        for step in reversed(self.steps):
            shapes = step.from_model_shapes(shapes)
        return shapes


AS_IS = Transform()


@dataclass(frozen=True)
class Rule:
    """Checkpoint names <-> model names, and the transform between them."""

    source: tuple[str, ...]
    target: tuple[str, ...]
    transform: Transform = AS_IS

    def for_block(self, index: int) -> Rule:
        return Rule(
            tuple(name.format(index) for name in self.source),
            tuple(name.format(index) for name in self.target),
            self.transform,
        )


def rule(source: str | tuple[str, ...], target: str | tuple[str, ...],
         transform: Transform = AS_IS) -> Rule:
    """A rule from one name or a tuple of names on each side."""
    as_tuple = (lambda names: (names,) if isinstance(names, str) else tuple(names))
    return Rule(as_tuple(source), as_tuple(target), transform)


def _pattern(template: str) -> re.Pattern:
    """A name template as a regex; group 1 is the block index where there is one."""
    return re.compile(re.escape(template).replace(r"\{\}", r"(\d+)") + r"\Z")


@dataclass(frozen=True)
class MappingTable:
    """A checkpoint format's names: the rules, the tensors it ignores, the prefixes it may carry."""

    format: str
    rules: tuple[Rule, ...]
    ignored: tuple[str, ...] = ()  # buffers with no weights, e.g. causal masks
    optional_prefixes: tuple[str, ...] = ()

    def expand(self, number_of_layers: int) -> list[Rule]:
        """Every rule with ``{}`` replaced by each block index."""
        expanded = []
        for each in self.rules:
            if any("{}" in name for name in each.source + each.target):
                expanded += [each.for_block(index) for index in range(number_of_layers)]
            else:
                expanded.append(each)
        return expanded

    def is_ignored(self, name: str) -> bool:
        return any(_pattern(template).match(name) for template in self.ignored)

    def strip_prefix(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Names without the optional prefix, e.g. ``transformer.h.0...`` -> ``h.0...``."""
        stripped = {}
        for name, tensor in tensors.items():
            for prefix in self.optional_prefixes:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    break
            stripped[name] = tensor
        return stripped

    def block_count(self, names) -> int:
        """How many blocks the checkpoint's names cover (highest block index + 1)."""
        patterns = [_pattern(template)
                    for each in self.rules for template in each.source if "{}" in template]
        indices = [int(found[1]) for name in names for pattern in patterns
                   if (found := pattern.match(name))]
        return max(indices, default=-1) + 1

    def source_name(self, target: str) -> str | None:
        """The checkpoint name that a single-tensor model name comes from (None: no such rule)."""
        for each in self.rules:
            if each.target == (target,) and len(each.source) == 1:
                return each.source[0]
        return None


def applicable_rules(table: MappingTable, model_state: Mapping[str, torch.Tensor],
                     number_of_layers: int) -> list[Rule]:
    """The table's rules whose model tensors all exist in ``model_state``."""
    return [
        each for each in table.expand(number_of_layers)
        if all(name in model_state for name in each.target)
    ]


def from_model(table: MappingTable, model_state: Mapping[str, torch.Tensor],
               number_of_layers: int) -> dict[str, torch.Tensor]:
    """Model tensors -> the format's names and layout."""
    converted = {}
    for each in applicable_rules(table, model_state, number_of_layers):
        outputs = each.transform.from_model([model_state[name] for name in each.target])
        converted.update(zip(each.source, outputs, strict=True))
    return converted


def to_model(table: MappingTable, source: Mapping[str, torch.Tensor],
             model_state: Mapping[str, torch.Tensor], config: dict, *,
             origin: str) -> dict[str, torch.Tensor]:
    """The format's tensors -> model names and layout.

    ``model_state`` holds what the model expects (meta tensors are enough). Every problem is
    gathered before anything is converted.

    Raises:
        MappingError: listing every missing, unexpected, mis-shaped or non-float tensor.
    """
    rules = applicable_rules(table, model_state, config["number_of_layers"])
    expected = {}  # source name -> the shape the model needs it to have
    for each in rules:
        shapes = each.transform.from_model_shapes(
            [tuple(model_state[name].shape) for name in each.target])
        expected.update(zip(each.source, shapes, strict=True))
    problems = [f"missing tensor {name!r}, expected shape {list(expected[name])}"
                for name in sorted(expected) if name not in source]
    problems += [f"unexpected tensor {name!r} with shape {list(source[name].shape)}"
                 for name in sorted(source)
                 if name not in expected and not table.is_ignored(name)]
    for name in sorted(set(expected) & set(source)):
        want, found = expected[name], source[name]
        if tuple(found.shape) != want:
            problems.append(f"tensor {name!r}: expected shape {list(want)}, "
                            f"found {list(found.shape)}")
        elif not found.is_floating_point():
            problems.append(f"tensor {name!r}: expected floating point, found {found.dtype}")
    if problems:
        raise MappingError(origin, problems, config)
    converted = {}
    for each in rules:
        tensors = each.transform.to_model([source[name] for name in each.source])
        converted.update(zip(each.target, tensors, strict=True))
    return converted
