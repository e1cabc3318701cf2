"""The mapping engine: applies a format's name table in either direction.

A table is data: one line per rule pairing a model slot (``gpt2port.slots``) with the
checkpoint's tensor name, and the transform that knows both directions. ``{}`` in a name stands
for the block index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .. import slots
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

    def bound(self, config: dict) -> Transform:
        """This transform for a model of ``config`` (one that needs the head count takes it)."""
        return self


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


class Heads(Transform):
    """TransformerLens's per-head layout: a projection reading the residual stream, [H, D, Dh]
    (``reads``), one writing to it, [H, Dh, D] (``writes``), or a bias, [H, Dh], <-> the
    model's [D, D] and [D]. Needs the head count: ``bound`` gives it."""

    def __init__(self, kind: str, heads: int | None = None):
        self.kind, self.heads = kind, heads
        self.description = {"reads": "[H, D, Dh] -> [H*Dh, D]", "writes": "[H, Dh, D] -> [D, H*Dh]",
                            "bias": "[H, Dh] -> [H*Dh]"}[kind]

    def bound(self, config):
        return Heads(self.kind, config["number_of_heads"])

    def to_model(self, tensors):
        (tensor,) = tensors
        if self.kind == "reads":  # x @ W[h] for each head: rows of the model's weight per head
            return [tensor.permute(0, 2, 1).reshape(-1, tensor.shape[1])]
        if self.kind == "writes":
            return [tensor.reshape(-1, tensor.shape[2]).t()]
        return [tensor.reshape(-1)]

    def from_model(self, tensors):
        (tensor,) = tensors
        if self.kind == "reads":
            return [tensor.reshape(self.heads, -1, tensor.shape[1]).permute(0, 2, 1)]
        if self.kind == "writes":
            return [tensor.t().reshape(self.heads, -1, tensor.shape[0])]
        return [tensor.reshape(self.heads, -1)]

    def from_model_shapes(self, shapes):
        (shape,) = shapes
        if self.kind == "reads":
            return [(self.heads, shape[1], shape[0] // self.heads)]
        if self.kind == "writes":
            return [(self.heads, shape[1] // self.heads, shape[0])]
        return [(self.heads, shape[0] // self.heads)]


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
# a table's transform words -> the transform, given how many model tensors the rule fills
TRANSFORMS = {"transpose": lambda parts: Transpose(), "squeeze": lambda parts: Squeeze(0),
              "split": lambda parts: Split(parts, dim=0),
              "heads in": lambda parts: Heads("reads"), "heads out": lambda parts: Heads("writes"),
              "heads": lambda parts: Heads("bias")}


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


def _pattern(template: str) -> re.Pattern:
    """A name template as a regex; group 1 is the block index where there is one."""
    return re.compile(re.escape(template).replace(r"\{\}", r"(\d+)") + r"\Z")


def _rule(line: str) -> Rule:
    """``SLOT  THEIR_NAME  [WORD, WORD...]``: a slot key (or group key) of ``slots``, the
    format's name for it, and the transform words (``TRANSFORMS``) from theirs to the model's."""
    key, theirs, *rest = line.split(None, 2)
    if key not in slots.BY_KEY and key not in slots.GROUPS:
        raise ValueError(f"name table line {line!r}: {key!r} is not a slot of gpt2port.slots")
    targets = tuple(slots.BY_KEY[each].name for each in slots.GROUPS.get(key, (key,)))
    if ("{}" in theirs) != ("{}" in targets[0]):
        raise ValueError(f"name table line {line!r}: one side is per layer, the other is not")
    words = [word.strip() for word in rest[0].split(",")] if rest else []
    unknown = [word for word in words if word not in TRANSFORMS]
    if unknown:
        raise ValueError(f"name table line {line!r}: unknown transform {unknown[0]!r}")
    steps = [TRANSFORMS[word](len(targets)) for word in words]
    transform = AS_IS if not steps else steps[0] if len(steps) == 1 else Chain(*steps)
    return Rule((theirs,), targets, transform)


@dataclass(frozen=True)
class MappingTable:
    """A checkpoint format's names: the rules, the tensors it ignores, the prefixes it may carry."""

    format: str
    rules: tuple[Rule, ...]
    ignored: tuple[str, ...] = ()  # buffers with no weights, e.g. causal masks
    optional_prefixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, format: str, text: str, **options) -> MappingTable:
        """A table from one line per rule (see ``_rule``), as docs/mapping.md shows it."""
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return cls(format, tuple(map(_rule, lines)), **options)

    @classmethod
    def identity(cls, format: str) -> MappingTable:
        """Every slot under the model's own name."""
        return cls(format, tuple(Rule((slot.name,), (slot.name,)) for slot in slots.SLOTS))

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

    def rule_for(self, target: str) -> Rule | None:
        """The rule that fills the single-tensor model name ``target`` from one checkpoint
        tensor (None: no such rule)."""
        return next((each for each in self.rules
                     if each.target == (target,) and len(each.source) == 1), None)

    def source_name(self, target: str) -> str | None:
        """The checkpoint name that a single-tensor model name comes from (None: no such rule)."""
        rule = self.rule_for(target)
        return None if rule is None else rule.source[0]


def applicable_rules(table: MappingTable, config: dict) -> tuple[list[Rule], dict]:
    """The table's rules for the tensors a model of ``config`` has, and those tensors' shapes."""
    expected = slots.expected_tensors(config)
    rules = [Rule(each.source, each.target, each.transform.bound(config))
             for each in table.expand(config["number_of_layers"])
             if all(name in expected for name in each.target)]
    return rules, expected


def source_shapes(rules: list[Rule], expected: dict[str, tuple[int, ...]]
                  ) -> dict[str, tuple[int, ...]]:
    """Each tensor the format holds under ``rules``, with its shape (``expected``: the model's
    tensors' shapes)."""
    shapes = {}
    for each in rules:
        found = each.transform.from_model_shapes([expected[name] for name in each.target])
        shapes.update(zip(each.source, found, strict=True))
    return shapes


def to_model(table: MappingTable, source: Mapping[str, torch.Tensor], config: dict, *,
             origin: str) -> dict[str, torch.Tensor]:
    """The format's tensors -> model names and layout, for a model of ``config``. Every problem
    is gathered before anything is converted.

    Raises:
        MappingError: listing every missing, unexpected, mis-shaped or non-float tensor.
    """
    rules, model_shapes = applicable_rules(table, config)
    expected = source_shapes(rules, model_shapes)
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
