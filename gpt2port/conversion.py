"""``convert``: a checkpoint in any supported format -> another, through the model's own names."""

from __future__ import annotations

from pathlib import Path

import torch

from .files import copy_tokenizer, write_folder
from .formats import huggingface, native
from .loading import model_from_checkpoint, open_checkpoint, resolve

WRITERS = {"hf": huggingface.save, "native": native.save}  # --to name -> writer(model, folder)


def convert(source: str | Path, destination: str | Path, *, to: str,
            dtype: torch.dtype | str | None = None, revision: str | None = None) -> Path:
    """Read ``source`` (preset, Hub id, folder or file), write it to the new folder
    ``destination`` in format ``to``, with the tokenizer files when the source has them.

    The folder appears only when complete.
    """
    folder = resolve(source, revision=revision)
    model = model_from_checkpoint(open_checkpoint(folder), dtype=dtype)
    tokenizer = folder if folder.is_dir() else folder.parent
    write = WRITERS[to]

    def fill(output: Path) -> None:
        write(model, output)
        copy_tokenizer(tokenizer, output)

    return write_folder(Path(destination), fill)
