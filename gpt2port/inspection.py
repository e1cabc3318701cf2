"""A checkpoint's tensors next to the model names they become, read off the mapping table."""

from __future__ import annotations

from .loading import Checkpoint


def describe(checkpoint: Checkpoint) -> str:
    """One line per source tensor: name, shape, dtype -> model names, transform."""
    table, tensors = checkpoint.table, checkpoint.tensors
    destinations = {}
    for each in table.expand(checkpoint.config["number_of_layers"]):
        for source in each.source:
            destinations[source] = (", ".join(each.target), each.transform.description)
    lines = [f"{checkpoint.origin}: {len(tensors)} tensors, format {table.format}",
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
    if table.source_name("output_head.weight") not in tensors:
        lines.append("  output_head.weight is tied to token_embedding_table.weight")
    return "\n".join(lines)
