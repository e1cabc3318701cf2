"""A checkpoint's tensors next to the model names they become, read off the mapping table."""

from __future__ import annotations

from pathlib import Path

from .config import TASKS, is_classifier
from .formats import Checkpoint
from .formats.table import MappingTable
from .loading import checkpoint_tokenizer, open_checkpoint, resolve
from .text.encoders import Tokenizer


def inspect(name_or_path: str | Path, *, revision: str | None = None,
            filename: str | None = None, cache_dir: str | Path | None = None,
            offline: bool = False, tokenizer: str | Path | Tokenizer | None = None,
            base: str | Path | None = None) -> str:
    """What ``gpt2port inspect`` prints: each source tensor of a preset, Hub repo id, folder or
    file, its model name(s), shape, dtype and transform, the config, and the tokenizer that
    encodes its text (``tokenizer`` where given, as ``load_tokenizer`` takes it). For a LoRA
    adapter: its base's tensors, then the layers the adapter changes, their rank and scale
    (``base``: the base, where not the one the adapter names).

    Raises:
        CheckpointError: for files that are missing or malformed.
        ConfigError: for a config this model cannot implement.
        TokenizerError: for a tokenizer that cannot be read or is not this model's.
        DownloadError: when the Hub cannot be reached or refuses.
    """
    checkpoint = open_checkpoint(resolve(name_or_path, revision=revision, filename=filename,
                                         cache_dir=cache_dir, offline=offline),
                                 base=base, cache_dir=cache_dir, offline=offline)
    found = checkpoint_tokenizer(checkpoint, tokenizer=tokenizer, cache_dir=cache_dir,
                                 offline=offline)
    given = " (given)" if tokenizer is not None else (
        "" if checkpoint.vocabulary is not None else " (GPT-2's: the checkpoint has none)")
    said = (f"tokenizer: {found.kind}{given}, {found.n_vocab} tokens, run by {found.runs_in}"
            if found is not None else "tokenizer: none (ids only; text is refused)")
    return describe(checkpoint) + "\n" + said


def describe(checkpoint: Checkpoint) -> str:
    """One line per source tensor: name, shape, dtype -> model names, transform."""
    table, tensors = checkpoint.table, checkpoint.tensors
    destinations = {}
    for each in table.expand(checkpoint.config["number_of_layers"]):
        for source in each.source:
            destinations[source] = (", ".join(each.target), each.transform.description)
    lines = [f"{checkpoint.origin}: {len(tensors)} tensors, format {checkpoint.format.name}",
             "config: " + ", ".join(f"{k}={v}" for k, v in checkpoint.config.items())]
    width = max(map(len, tensors), default=0)
    for name, tensor in tensors.items():
        shape = "x".join(map(str, tensor.shape)) or "scalar"
        if name in destinations:
            target, how = destinations[name]
            where = f"-> {target}  [{how}]"
        else:
            where = "(ignored buffer)" if table.is_ignored(name) else "(not in the table)"
        lines.append(f"  {name:{width}}  {shape:>14}  {str(tensor.dtype)[6:]:8} {where}")
    if (table.source_name("output_head.weight") not in tensors
            and checkpoint.config["tie_output_head"]):
        lines.append("  output_head.weight is tied to token_embedding_table.weight")
    lines.append(head_summary(checkpoint.config))
    if checkpoint.adapter is not None:
        lines += checkpoint.adapter.describe()
    return "\n".join(lines)


def head_summary(config: dict) -> str:
    """What the output head computes, in one line."""
    bias = ", with a bias" if config["output_bias"] else ""
    if not is_classifier(config):
        choice = (f"; a multiple-choice head of {config['choice_outputs']} score(s)"
                  f"{', tanh' if config['choice_activation'] else ''}, read at a choice's last "
                  "token" if config["choice_outputs"] else "")
        return f"head: language model, {config['output_size']} rows{bias}{choice}"
    labels = config["output_labels"] or range(config["output_size"])
    read = ("the last token's row scores the text" if config["task"] == "text_classification"
            else "every position's row is read")
    return (f"head: {TASKS[config['task']]}, {config['output_size']} classes "
            f"({', '.join(map(str, labels))}){bias}; {read}")


def table_markdown(table: MappingTable) -> str:
    """A format's name table as Markdown, for docs/ (``{}`` is the block index)."""
    rows = ["| checkpoint name | model name(s) | transform |", "|---|---|---|"]
    for each in table.rules:
        target = "<br>".join(f"`{name}`" for name in each.target)
        rows.append(f"| `{', '.join(each.source)}` | {target} | {each.transform.description} |")
    ignored = ", ".join(f"`{name}`" for name in table.ignored) or "none"
    prefixes = ", ".join(f"`{prefix}`" for prefix in table.optional_prefixes) or "none"
    return "\n".join(rows + ["", f"Ignored (buffers without weights): {ignored}.",
                             f"Optional prefixes, stripped on reading: {prefixes}.", ""])
