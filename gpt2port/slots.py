"""Every tensor of the model once: its name, its shape, and when it exists.

The checkpoint formats map these slots to their own names (``formats/table.py``), so a new
tensor (a classifier head, say) is one line here and one in each format that holds it. A slot's
``key`` is its name inside a block for per-layer slots (``attention_norm.scale`` for
``transformer_blocks.{}.attention_norm.scale``), else its name.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import feed_forward_width

BLOCK = "transformer_blocks.{}."
# shape letters -> the model config key they stand for; F is the feed-forward width
SIZES = {"V": "padded_vocab_size", "C": "context_length", "D": "embedding_dimension",
         "O": "output_size", "F": "feed_forward_width", "K": "choice_outputs"}


@dataclass(frozen=True)
class Slot:
    """One tensor of the model: ``name`` (``{}`` is the block index), its shape in ``SIZES``
    letters, and the config key that must be true for it to exist (None: always)."""

    name: str
    shape: str
    needs: str | None = None

    @property
    def key(self) -> str:
        return self.name.removeprefix(BLOCK)

    @property
    def per_layer(self) -> bool:
        return "{}" in self.name

    def exists(self, config: dict) -> bool:
        if self.needs == "untied_head":
            return not config["tie_output_head"]
        return self.needs is None or bool(config[self.needs])

    def shape_for(self, config: dict) -> tuple[int, ...]:
        sizes = {**config, "feed_forward_width": feed_forward_width(config)}
        return tuple(int(term[:-1] or 1) * sizes[SIZES[term[-1]]] for term in self.shape.split())


def _linear(name: str, shape: str, needs_bias: str = "bias") -> tuple[Slot, Slot]:
    return Slot(f"{name}.weight", shape), Slot(f"{name}.bias", shape.split()[0], needs_bias)


def _norm(name: str) -> tuple[Slot, Slot]:
    return Slot(f"{name}.scale", "D"), Slot(f"{name}.shift", "D", "bias")


SLOTS: tuple[Slot, ...] = (
    Slot("token_embedding_table.weight", "V D"),
    Slot("position_embedding_table.weight", "C D"),
    *_norm(f"{BLOCK}attention_norm"),
    *_linear(f"{BLOCK}attention.query_projection", "D D", "qkv_bias"),
    *_linear(f"{BLOCK}attention.key_projection", "D D", "qkv_bias"),
    *_linear(f"{BLOCK}attention.value_projection", "D D", "qkv_bias"),
    *_linear(f"{BLOCK}attention.output_projection", "D D"),
    *_norm(f"{BLOCK}feed_forward_norm"),
    *_linear(f"{BLOCK}feed_forward.expansion", "F D"),
    *_linear(f"{BLOCK}feed_forward.contraction", "D F"),
    *_norm("layer_norm"),
    Slot("output_head.weight", "O D", "untied_head"),
    Slot("output_head.bias", "O", "output_bias"),
    Slot("choice_head.weight", "K D", "choice_outputs"),
    Slot("choice_head.bias", "K", "choice_outputs"),
)
BY_KEY = {slot.key: slot for slot in SLOTS}
# Several slots a format stores as one tensor (q|k|v packed), under one key of their own.
GROUPS = {
    f"attention.qkv.{kind}": tuple(f"attention.{part}_projection.{kind}"
                                   for part in ("query", "key", "value"))
    for kind in ("weight", "bias")
}


def expected_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    """Every model tensor a model of ``config`` has (a tied head has none), with its shape."""
    expected = {}
    for slot in SLOTS:
        if slot.exists(config):
            names = ([slot.name.format(i) for i in range(config["number_of_layers"])]
                     if slot.per_layer else [slot.name])
            expected.update(dict.fromkeys(names, slot.shape_for(config)))
    return expected
