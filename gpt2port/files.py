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
    remove_stale_partials(destination)
    partial = Path(tempfile.mkdtemp(prefix=f".{destination.name}.{os.getpid()}.",
                                    suffix=".partial", dir=destination.parent))
    try:
        fill(partial)
        os.replace(partial, destination)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return destination


def remove_stale_partials(destination: Path) -> None:
    """Remove the temporary folders of killed writes to ``destination``: those whose process
    (its id is in the name) is no longer running."""
    for partial in destination.parent.glob(f".{destination.name}.*.partial"):
        pid = partial.name[len(destination.name) + 2:].split(".")[0]
        if pid.isdigit() and not _is_running(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def copy_tokenizer(source: Path | None, folder: Path,
                   names: tuple[str, str] = ("vocab.json", "merges.txt")) -> None:
    """Copy the tokenizer files from ``source``, when it has them, under ``names``."""
    found = tokenizer_files(source) if source is not None else None
    for path, name in zip(found or (), names):
        shutil.copyfile(path, Path(folder) / name)
