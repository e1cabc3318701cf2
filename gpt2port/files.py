"""Writing outputs so that a reader never sees half of them: a temporary folder, renamed when done."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import CheckpointError
from .tokenizer import tokenizer_files



def write_folder(destination: Path, fill: Callable[[Path], object]) -> Path:
    """``fill(folder)`` a temporary folder beside ``destination``, then rename it into place.

    Raises:
        CheckpointError: when ``destination`` exists and is not empty (nothing is overwritten).
    """
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise CheckpointError(f"{destination}: already exists and is not empty",
                              hint="choose a new output folder, or remove this one")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial",
                                    dir=destination.parent))
    try:
        fill(partial)
        os.replace(partial, destination)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return destination


def copy_tokenizer(source: Path | None, folder: Path,
                   names: tuple[str, str] = ("vocab.json", "merges.txt")) -> None:
    """Copy the tokenizer files from ``source``, when it has them, under ``names``."""
    found = tokenizer_files(source) if source is not None else None
    for path, name in zip(found or (), names):
        shutil.copyfile(path, Path(folder) / name)
