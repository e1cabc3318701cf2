"""Weight equivalence as a question with an answer: do two checkpoints, in any formats and
dtypes, hold the same model? Their configs, their tensors under the model's names, and their
logits over a text, with one verdict.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..formats import Checkpoint
from ..loading import checkpoint_tokenizer, model_from_checkpoint, open_checkpoint, resolve
from ..model import GPTModel
from ..text.encoders import Tokenizer
from .figures import LogitFigures, checked_text, drawn_ids, logit_figures, text_ids

LARGEST = 5  # the differing tensors a report names
TRAINING_ONLY = ("dropout_rate",)  # config keys that do not change what a model computes


@dataclass
class TensorDifference:
    """One tensor that is not bit-equal: its model name, its names in each checkpoint, how far."""

    name: str
    theirs: tuple[str, str]  # the tensor's name in A's format and in B's
    max_abs: float
    max_relative: float


@dataclass
class Comparison:
    """What ``compare`` found; ``verdict`` is ``identical``, ``equivalent`` or ``different``."""

    a: str
    b: str
    config_differences: dict[str, tuple[object, object]] = field(default_factory=dict)
    config_names: dict[str, tuple[str, str]] = field(default_factory=dict)  # in each format
    identical_tensors: int = 0
    different_tensors: list[TensorDifference] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    logits: LogitFigures | None = None  # None: shapes too different to run both on one text

    @property
    def verdict(self) -> str:
        """``identical``: every tensor bit-equal and the configs the same but for training-only
        values (dropout); ``equivalent``: logits within fp32 rounding; else ``different``."""
        computing = [key for key in self.config_differences if key not in TRAINING_ONLY]
        if (not computing and not self.different_tensors and not self.only_in_a
                and not self.only_in_b):
            return "identical"
        if self.logits is not None and self.logits.within:
            return "equivalent"
        return "different"

    def largest(self) -> list[TensorDifference]:
        return sorted(self.different_tensors, key=lambda d: -d.max_abs)[:LARGEST]

    def report(self) -> str:
        lines = [f"A: {self.a}", f"B: {self.b}"]
        if self.config_differences:
            lines.append("config differs:")
            for key, (left, right) in self.config_differences.items():
                names = self.config_names.get(key)
                said = f" (A's {names[0]}, B's {names[1]})" if names else ""
                lines.append(f"  {key}: {left!r} vs {right!r}{said}")
        shared = self.identical_tensors + len(self.different_tensors)
        lines.append(f"tensors: {self.identical_tensors} of {shared} shared bit-identical, "
                     f"{len(self.different_tensors)} differ")
        for each in self.largest():
            lines.append(f"  {each.name} (A: {each.theirs[0]}, B: {each.theirs[1]}): max abs "
                         f"{each.max_abs:.3g}, max relative {each.max_relative:.3g}")
        for side, names in (("A", self.only_in_a), ("B", self.only_in_b)):
            if names:
                lines.append(f"  only in {side}: {', '.join(names)}")
        if self.logits is not None:
            lines.append(self.logits.report("A", "B"))
        lines.append(self.verdict)
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "verdict": self.verdict}, default=str)


def compare(a: str | Path, b: str | Path, *, text: str | None = None,
            revision: str | None = None, filename: str | None = None,
            other_revision: str | None = None, other_filename: str | None = None,
            cache_dir: str | Path | None = None, offline: bool = False,
            tokenizer: str | Path | Tokenizer | None = None, base: str | Path | None = None,
            other_base: str | Path | None = None) -> Comparison:
    """Compare two checkpoints (presets, Hub ids, folders, files; any formats and dtypes):
    configs, tensors under the model's names, and logits over ``text`` (default: a short text
    shipped with gpt2port), in windows of the context length. Each is resolved as
    ``load_pretrained`` resolves it: ``revision`` and ``filename`` pick what ``a`` names,
    ``other_revision`` and ``other_filename`` what ``b`` names; ``base`` and ``other_base``
    are the base models of LoRA adapters trained elsewhere than they name. The text is encoded by
    ``tokenizer`` (as ``load_tokenizer`` takes it), else by the first checkpoint's own (or the
    second's); with neither and a vocabulary that is not GPT-2's, ids drawn across the
    vocabulary are compared instead of the shipped sample, and a given text is refused.

    Raises:
        ConfigError: for a text too short to score, or a name that is not text or a path.
        TokenizerError: for a text and no tokenizer to encode it with.
        CheckpointError: for files that are missing, malformed or do not fit the model.
        DownloadError: when the Hub cannot be reached or refuses.
    """
    checked_text(text)  # an unusable text is refused before anything is loaded
    found = []
    for name, picked, file, under in ((a, revision, filename, base),
                                      (b, other_revision, other_filename, other_base)):
        checkpoint = open_checkpoint(resolve(name, revision=picked, filename=file,
                                             cache_dir=cache_dir, offline=offline),
                                     base=under, cache_dir=cache_dir, offline=offline)
        found.append((checkpoint, model_from_checkpoint(checkpoint, dtype=torch.float32)))
    (left, model_a), (right, model_b) = found
    result = Comparison(str(a), str(b))
    _compare_configs(result, left, right, model_a.config, model_b.config)
    _compare_tensors(result, left, right, model_a, model_b)
    if _same_shape(model_a, model_b):
        context = min(model_a.config["context_length"], model_b.config["context_length"])
        vocabulary = min(model_a.config["vocab_size"], model_b.config["vocab_size"])
        ids, from_text = _scored_ids(left, right, text, tokenizer, cache_dir=cache_dir,
                                     offline=offline)
        result.logits = logit_figures(_logits_of(model_a), _logits_of(model_b), ids, context,
                                      vocabulary, from_text=from_text)
    return result


def _scored_ids(left: Checkpoint, right: Checkpoint, text: str | None,
                tokenizer: str | Path | Tokenizer | None, *, cache_dir: str | Path | None,
                offline: bool) -> tuple[list[int], bool]:
    """The ids to score both models on, and whether they are a text's (perplexity means
    something): ``text`` by the first tokenizer found, else ids drawn across the vocabulary."""
    for checkpoint in (left, right):
        found = checkpoint_tokenizer(checkpoint, tokenizer=tokenizer, cache_dir=cache_dir,
                                     offline=offline)
        if found is not None:
            return text_ids(text, found, checkpoint.config, checkpoint.origin), True
    if text is not None:
        text_ids(text, None, left.config, left.origin)  # refused: no tokenizer
    return drawn_ids(left.config), False


def _compare_configs(result: Comparison, left: Checkpoint, right: Checkpoint, config_a: dict,
                     config_b: dict) -> None:
    names_a, names_b = left.format.config_table.names(), right.format.config_table.names()
    for key in sorted(set(config_a) | set(config_b)):
        if config_a.get(key) != config_b.get(key):
            result.config_differences[key] = (config_a.get(key), config_b.get(key))
            if key in names_a or key in names_b:
                result.config_names[key] = (names_a.get(key, "(none)"), names_b.get(key, "(none)"))


def _source_names(checkpoint: Checkpoint) -> dict[str, str]:
    """Model tensor name -> the checkpoint's own name for it."""
    names = {}
    for rule in checkpoint.table.expand(checkpoint.config["number_of_layers"]):
        for target in rule.target:
            names[target] = rule.source[0]
    return names


def _compare_tensors(result: Comparison, left: Checkpoint, right: Checkpoint, model_a: GPTModel,
                     model_b: GPTModel) -> None:
    state_a, state_b = _untied_state(model_a), _untied_state(model_b)
    theirs_a, theirs_b = _source_names(left), _source_names(right)
    result.only_in_a = sorted(set(state_a) - set(state_b))
    result.only_in_b = sorted(set(state_b) - set(state_a))
    for name in (name for name in state_a if name in state_b):
        one, other = state_a[name].float(), state_b[name].float()
        if one.shape != other.shape:
            result.only_in_a.append(f"{name} {list(one.shape)}")
            result.only_in_b.append(f"{name} {list(other.shape)}")
        elif torch.equal(one, other):
            result.identical_tensors += 1
        else:
            difference = (one - other).abs()
            relative = difference / one.abs().clamp_min(torch.finfo(torch.float32).tiny)
            result.different_tensors.append(TensorDifference(
                name, (theirs_a.get(name, name), theirs_b.get(name, name)),
                float(difference.max()), float(relative.max())))


def _untied_state(model: GPTModel) -> dict[str, torch.Tensor]:
    """The model's tensors; a tied head is the embedding, not a tensor of its own."""
    state = dict(model.state_dict())
    if model.config["tie_output_head"]:
        del state["output_head.weight"]
    return state


def _same_shape(model_a: GPTModel, model_b: GPTModel) -> bool:
    keys = ("embedding_dimension", "number_of_layers", "number_of_heads", "output_size")
    return all(model_a.config[key] == model_b.config[key] for key in keys)


def _logits_of(model: GPTModel):
    def logits(window: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return model(torch.tensor([window]))[0].float()
    return logits


#END
