"""Writing outputs so that a reader never sees half of them: a temporary folder, renamed when done."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import CheckpointError

TOKENIZER_FILES = ("vocab.json", "merges.txt")


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


def copy_tokenizer(source: Path | None, folder: Path) -> None:
    """Copy vocab.json and merges.txt from ``source`` when it has them."""
    for name in TOKENIZER_FILES:
        if source is not None and (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(folder) / name)
