"""``convert``: a checkpoint in any format -> another, through the model's own names.

A conversion never changes the model silently: what the target cannot hold is refused, or,
where the logits stay the same (or the user asked for the approximation), stated as a
``ConversionWarning`` with the measured logit change.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import GPT2_VARIANT, TASKS, attention_scale
from .console.progress import progress, stage
from .errors import ConfigError
from .formats import BY_NAME, FORMATS, Format
from .io.outputs import write_file, write_folder
from .io.pages import released_as_used
from .loading import given_vocabulary, model_from_checkpoint, open_checkpoint, resolve
from .model import GPTModel
from .proof.figures import prompt_for
from .skeleton import empty_model
from .text.encoders import Tokenizer
from .text.vocabulary import KINDS, Vocabulary


class ConversionWarning(UserWarning):
    """A change the target format makes to the model, stated instead of made silently."""


@dataclass(frozen=True)
class Change:
    """One config value the target holds differently; ``exact`` when the logits stay the same."""

    key: str
    before: object
    after: object
    why: str
    exact: bool = True

    def __str__(self) -> str:
        return f"{self.key} {self.before!r} -> {self.after!r}: {self.why}"


def plan(config: dict, target: Format, *, approximate_gelu: bool = False) -> list[Change]:
    """The changes writing a model of ``config`` in ``target`` makes.

    Raises:
        ConfigError: listing what the target cannot hold.
    """
    held = target.held_config(config)
    changes, refused = [], {}
    for key in sorted(held):
        before, after = config[key], held[key]
        if before == after:
            continue
        if key == "dropout_rate":
            changes.append(Change(key, before, after, f"{target.name} has no place for it "
                                  "(training only; logits unchanged)"))
        elif key == "vocab_size":
            changes.append(Change(key, before, after, f"{target.name} knows no padded "
                                  f"vocabulary: padding ids {before}..{after - 1} become "
                                  "ordinary ids (logits unchanged)"))
        elif key in ("bias", "qkv_bias", "output_bias") and after:
            changes.append(Change(key, before, after, "biases written as zeros (exact)"))
        elif key == "gelu_approximation" and (after == "none" or approximate_gelu):
            changes.append(Change(key, before, after, f"{target.name} computes "
                                  f"{'the exact' if after == 'none' else 'the tanh'} GELU",
                                  exact=False))
        elif key == "gelu_approximation":
            refused[key] = (f"the model computes the exact (erf) GELU; {target.name} knows only "
                            "GPT-2's tanh approximation")
        elif key == "tie_output_head":
            refused[key] = (f"{target.name} has no output head of its own, and this model's "
                            "head is not tied to the token embedding")
        elif key == "output_size":
            refused[key] = (f"the model is {TASKS[config['task']]} ({before} outputs); "
                            f"{target.name} holds only a language-model head ({after} rows)")
        elif key in ("choice_outputs", "choice_activation"):
            continue  # the task says it: a multiple-choice head is the double-heads model's
        elif key == "task":
            if before == "multiple_choice":
                refused[key] = (f"the model is {TASKS[before]}; {target.name} has no place for "
                                "its multiple-choice head")
            elif "output_size" not in refused:  # (which says what the model is)
                refused[key] = (f"the model is {TASKS[before]}; {target.name} holds it only as "
                                f"{TASKS[after]}, whose scores are read differently")
        elif key == "output_bias" and bias_folds(config):
            changes.append(Change(key, before, after, f"{target.name}'s head has no bias: the "
                                  "final layer norm's shift absorbs it (W d = b)", exact=False))
        elif key == "output_bias":
            refused[key] = (f"the output head has a bias, and {target.name}'s has none (its "
                            f"{config['output_size']} rows are more than the width "
                            f"{config['embedding_dimension']}, so no shift absorbs it)")
        elif key in SCALE_KEYS and target.folds_attention_scale:
            changes.append(Change(key, before, after, f"{target.name} scales attention by "
                                  "1/sqrt(head width) in every layer: each layer's own scale is "
                                  "folded into its query weights and biases", exact=False))
        elif key in GPT2_VARIANT:
            refused[key] = (f"the model has {_variant(key, before)}; {target.name} holds only "
                            f"GPT-2's {_variant(key, after)}")
        elif key == "output_labels":
            changes.append(Change(key, before, after, f"{target.name} has no place for class "
                                  "names (logits unchanged)"))
        else:
            refused[key] = (f"{key}={before!r}, but {target.name} holds only {after!r}")
    if refused:
        gelu = "gelu_approximation" in refused
        raise ConfigError(f"cannot convert to {target.name}: " + "; ".join(refused.values()),
                          hint=("pass --approximate-gelu (approximate_gelu=True) to write it "
                                "with the tanh GELU, and see the logit change it reports; or "
                                if gelu else "") + _holders(config, refused))
    return changes


SCALE_KEYS = ("attention_scaled_by_head_width", "attention_scaled_by_layer")


def fold_attention_scale(state: dict[str, torch.Tensor], config: dict, held: dict
                         ) -> dict[str, torch.Tensor]:
    """Each layer's query weight and bias multiplied by its scale under ``config`` over its
    scale under ``held``: the scores ``(s q) . k`` of a format that scales by the other."""
    for layer in range(config["number_of_layers"]):
        ratio = attention_scale(config, layer) / attention_scale(held, layer)
        if ratio != 1.0:
            for kind in ("weight", "bias"):
                name = f"transformer_blocks.{layer}.attention.query_projection.{kind}"
                state[name] = state[name] * ratio
    return state


def _variant(key: str, value: object) -> str:
    """A variant config value in words."""
    if key == "feed_forward_width":
        return ("feed-forward, 4 x the embedding width" if value is None
                else f"feed-forward width {value}")
    if key == "activation":
        return f"{value} activation" if value != "gelu" else "GELU"
    if key == "attention_scaled_by_head_width":
        return "attention scaled by 1/sqrt(head width)" if value else "unscaled attention scores"
    return ("attention scores also divided by (layer index + 1)" if value
            else "attention scale, the same in every layer")


def _holders(config: dict, refused: dict) -> str:
    """Which formats hold the values ``plan`` refused."""
    keys = {*refused, "task"}  # a head is held only with what it is for
    names = [each.name for each in FORMATS
             if all(each.held_config(config)[key] == config[key] for key in keys)]
    listed = " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"
    return f"convert to {listed}, which hold it"


def tokenizer_plan(vocabulary: Vocabulary | None, config: dict, target: Format
                   ) -> tuple[Vocabulary | None, list[str]]:
    """The tokenizer to write, and what to say about it: a source without one, one that does
    not fit the model's rows, one the target does not keep, and what the target keeps of it.

    Raises:
        ConfigError: where the target's file would not work with that tokenizer (a GGUF
            without one, or one llama.cpp would encode differently).
    """
    rows = config["padded_vocab_size"]
    said = []
    if vocabulary is not None and len(vocabulary) > rows:
        said = [(f"tokenizer: not written: it has {len(vocabulary)} tokens and the model "
                 f"{rows} embedding rows, so it does not describe this model's ids")]
        vocabulary = None
    refusal = target.tokenizer_refusal(vocabulary)
    if refusal is not None:
        raise ConfigError(f"cannot convert to {target.name}: {refusal}",
                          hint=TOKENIZER_HINT if vocabulary is None else KEPT_HINT)
    if vocabulary is None:
        return None, said or [f"tokenizer: the source has none, so the {target.name} export has none"]
    if not target.keeps_tokenizer(vocabulary):
        kind = (KINDS[vocabulary.kind] if vocabulary.kind != "bpe" else
                "a byte-level BPE whose ids are not in GPT-2's merge order")
        return None, [(f"tokenizer: left out: {target.name} holds only GPT-2's byte-level BPE, "
                       f"and this one is {kind}")]
    return vocabulary, [f"tokenizer: {loss}" for loss in target.tokenizer_losses(vocabulary)]


TOKENIZER_HINT = ("pass the model's own tokenizer with --tokenizer PATH|REPO (tokenizer=), or "
                  "--tokenizer gpt2 for GPT-2's; or convert to hf, which keeps any tokenizer")
KEPT_HINT = "convert to hf or native, which keep any tokenizer as its own files"


def bias_folds(config: dict) -> bool:
    """Whether a head bias can move into the final norm's shift: ``W d = b`` has an exact
    solution when the head has no more rows than the width (and full rank)."""
    return config["output_size"] <= config["embedding_dimension"]


def fold_head_bias(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The head's bias moved into the final norm's shift: ``W (x + d) = W x + b`` with ``d`` the
    least-squares solution of ``W d = b`` (float64).

    Raises:
        ConfigError: when ``W d = b`` has no exact solution (a head of lower rank).
    """
    weight, bias = state["output_head.weight"], state.pop("output_head.bias")
    shift = state["layer_norm.shift"]
    solution = torch.linalg.lstsq(weight.double(), bias.double().unsqueeze(1)).solution[:, 0]
    residual = float((weight.double() @ solution - bias.double()).abs().max())
    if residual > 1e-6 * max(1.0, float(bias.abs().max())):
        raise ConfigError(f"the output head's bias cannot move into the final norm's shift "
                          f"(its rows are not independent: residual {residual:.3g})",
                          hint="convert to native or book, which hold a head bias")
    state["layer_norm.shift"] = (shift.double() + solution).to(shift.dtype)
    return state


def adapted(model: GPTModel, config: dict) -> GPTModel:
    """``model`` as a model of ``config``: the same tensors, zero biases where it had none."""
    if config == model.config:
        return model
    result = empty_model(config)
    state = dict(model.state_dict())
    dtype = model.token_embedding_table.weight.dtype
    for name, tensor in result.state_dict().items():
        state.setdefault(name, torch.zeros(tensor.shape, dtype=dtype))
    if model.config["output_bias"] and not config["output_bias"]:
        state = fold_head_bias(state)
    if any(model.config[key] != config[key] for key in SCALE_KEYS):
        state = fold_attention_scale(state, model.config, config)
    if config["tie_output_head"]:
        state["output_head.weight"] = state["token_embedding_table.weight"]
    result.load_state_dict(state, assign=True)
    result.tie_output_head()
    return result.eval()


BYTES_PER_VALUE = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32}  # q8_0: 32 values + a scale


def output_size(model: GPTModel, dtype: str | None) -> int:
    """About how many bytes a model's tensors take in ``dtype`` (None: its own)."""
    values = sum(parameter.numel() for parameter in model.parameters())  # a tied head once
    own = model.token_embedding_table.weight.element_size()
    return int(values * (BYTES_PER_VALUE[dtype] if dtype else own))


def logit_change(model: GPTModel, other: GPTModel) -> float:
    """The largest absolute logit difference of two models on the verification prompt."""
    ids = torch.tensor([prompt_for(model.config)])
    with torch.inference_mode(), released_as_used(model, other):
        return float((model(ids).float() - other(ids).float()).abs().max())


def convert(source: str | Path, destination: str | Path, *, to: str,
            dtype: str | None = None, revision: str | None = None,
            filename: str | None = None, cache_dir: str | Path | None = None,
            offline: bool = False, approximate_gelu: bool = False,
            tokenizer: str | Path | Tokenizer | None = None,
            base: str | Path | None = None) -> Path:
    """Read ``source`` (preset, Hub id, folder or file), write it to the new folder
    ``destination`` in format ``to`` (a name in ``gpt2port.formats.BY_NAME``), with the
    tokenizer when the source has it, or ``tokenizer`` (as ``load_tokenizer`` takes it) where
    given (``filename``: one weights file of a Hub repo). ``dtype`` None keeps the source's
    own. A LoRA adapter is written merged onto its base (``base``, where not the one it
    names), and says so as a ``ConversionWarning``. A destination ending in the format's file suffix
    (``model.gguf``) is written as that one file.

    The output appears only when complete, with the permissions the umask gives. Changes the
    target makes are issued as ``ConversionWarning``s.

    Raises:
        ConfigError: for an unknown format or dtype, or a model (or tokenizer) the target cannot
            hold.
        TokenizerError: for a ``tokenizer`` that cannot be read.
        CheckpointError: for a source that is missing, malformed or does not fit the model.
        OutputError: when ``destination`` exists or cannot be written (a full disk included).
        DownloadError: when the Hub cannot be reached or refuses.
    """
    target = BY_NAME.get(to) if isinstance(to, str) else None
    if target is None:
        raise ConfigError(f"unknown format {to!r}", hint=f"formats: {', '.join(BY_NAME)}")
    if dtype is not None and dtype not in target.dtypes:
        raise ConfigError(f"{to} does not store {dtype}",
                          hint=f"{to} stores {', '.join(target.dtypes)}")
    if not isinstance(destination, (str, os.PathLike)) or not str(destination):
        raise ConfigError(f"destination: a folder or file path is needed, got {destination!r}",
                          hint="name a new folder (or a file with the format's suffix)")
    folder = resolve(source, revision=revision, filename=filename, cache_dir=cache_dir,
                     offline=offline)
    with progress(f"convert to {to}", 2) as bar:
        stage(bar, "reading")
        checkpoint = open_checkpoint(folder, base=base, cache_dir=cache_dir, offline=offline)
        model = model_from_checkpoint(checkpoint)
        if checkpoint.adapter is not None:
            warnings.warn(checkpoint.adapter.merge_statement(), ConversionWarning, stacklevel=2)
        changes = plan(model.config, target, approximate_gelu=approximate_gelu)
        given = checkpoint.vocabulary if tokenizer is None else given_vocabulary(
            tokenizer, cache_dir=cache_dir, offline=offline)[0]
        vocabulary, said = tokenizer_plan(given, model.config, target)
        written = adapted(model, target.held_config(model.config))
        for change in changes:
            if not change.exact:
                change = Change(change.key, change.before, change.after,
                                f"{change.why}; largest logit change on the verification "
                                f"prompt {logit_change(model, written):.3g}", exact=False)
            warnings.warn(str(change), ConversionWarning, stacklevel=2)
        for statement in said:
            warnings.warn(statement, ConversionWarning, stacklevel=2)
        bar.update()
        stage(bar, "writing")
        destination = Path(destination)
        one_file = target.file_suffix is not None and destination.suffix == target.file_suffix
        written_to = (write_file if one_file else write_folder)(
            destination, lambda output: target.write(
                written, output, dtype=dtype, vocabulary=vocabulary),
            needs=output_size(written, dtype))
        bar.update()
    return written_to
