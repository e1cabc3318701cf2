"""Writing outputs so that a reader never sees half of them: a temporary folder, renamed when done."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import CheckpointError, DiskFullError
from .tokenizer import FILE_NAMES, tokenizer_files


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
    except Exception as error:
        if _is_disk_full(error):
            raise DiskFullError(f"{destination}: no space left to write it ({error})",
                                hint="free some space, or write to another disk") from None
        raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return destination


# What a full disk (or the file-size limit) looks like from the writers: errno, safetensors'
# Rust error text, numpy's short write.
_DISK_FULL = re.compile(r"os error (27|28|122)|No space left|File too large|requested and \d+ "
                        r"written")


def _is_disk_full(error: Exception) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    return bool(_DISK_FULL.search(str(error)))


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
                   names: tuple[str, str] = FILE_NAMES[0]) -> None:
    """Copy the tokenizer files from ``source``, when it has them, under ``names``."""
    found = tokenizer_files(source) if source is not None else None
    for path, name in zip(found or (), names):
        shutil.copyfile(path, Path(folder) / name)
