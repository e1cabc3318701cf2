"""Writing outputs so that a reader never sees half of them: a temporary folder or file, renamed
when done, with the permissions the user's umask gives."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import DiskFullError, OutputError
from .tokenizer import TOKENIZER_JSON

# transformers' tokenizer files, copied together so that AutoTokenizer reads the copy as the source
HF_TOKENIZER_FILES = ("vocab.json", "merges.txt", TOKENIZER_JSON, "tokenizer_config.json",
                      "special_tokens_map.json", "added_tokens.json")


def write_folder(destination: Path, fill: Callable[[Path], object]) -> Path:
    """``fill(folder)`` a temporary folder beside ``destination``, then rename it into place.

    Raises:
        OutputError: when ``destination`` exists and is not empty (nothing is overwritten), or
            its folder cannot be written.
        DiskFullError: when the disk fills up; the partial output is removed.
    """
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise OutputError(f"{destination}: already exists and is not empty",
                          hint="choose a new output folder, or remove this one")
    return _write(destination, fill, tempfile.mkdtemp)


def write_file(destination: Path, fill: Callable[[Path], object]) -> Path:
    """``fill(path)`` a temporary file beside ``destination``, then rename it into place.

    Raises:
        OutputError: when ``destination`` exists (nothing is overwritten), or its folder cannot
            be written.
        DiskFullError: when the disk fills up; the partial output is removed.
    """
    destination = Path(destination)
    if destination.exists():
        raise OutputError(f"{destination}: already exists",
                          hint="choose a new file name, or remove this file")

    def make(**names: str) -> str:
        handle, path = tempfile.mkstemp(**names)
        os.close(handle)
        return path

    return _write(destination, fill, make)


def _write(destination: Path, fill: Callable[[Path], object], make: Callable[..., str]) -> Path:
    """Make a partial output with ``make`` (mkdtemp's arguments), fill it, give it the
    permissions the umask gives new files, rename it to ``destination``."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(destination.parent)
        partial = Path(make(prefix=f".{destination.name}.{os.getpid()}.", suffix=".partial",
                            dir=destination.parent))
    except OSError as error:
        raise OutputError(f"{destination}: cannot write there ({error.strerror or error})",
                          hint="choose a folder you can write to") from None
    try:
        fill(partial)
        _permit(partial, current_umask())
        os.replace(partial, destination)
    except Exception as error:
        if _is_disk_full(error):
            raise DiskFullError(f"{destination}: no space left to write it ({error})",
                                hint="free some space, or write to another disk") from None
        raise
    finally:
        _remove(partial)
    return destination


def current_umask() -> int:
    """The process's umask, read from ``/proc/self/status`` (Linux 4.7 and later) without
    setting it; where that is not there, through ``os.umask``, which sets it and at once back
    (for a moment another thread would create files with 0o022)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _permit(path: Path, umask: int) -> None:
    """Folders 0777 and files 0666 less ``umask``, as a new file gets them: mkdtemp, mkstemp
    and safetensors' writer make theirs private."""
    for each in [path, *(path.rglob("*") if path.is_dir() else ())]:
        os.chmod(each, (0o777 if each.is_dir() else 0o666) & ~umask)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# What a full disk (or the file-size limit) looks like from the writers: errno, safetensors'
# Rust error text, numpy's short write.
_DISK_FULL = re.compile(r"os error (27|28|122)|No space left|File too large|requested and \d+ "
                        r"written")


def _is_disk_full(error: Exception) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    return bool(_DISK_FULL.search(str(error)))


# ".NAME.PID.RANDOM.partial", the temporary outputs ``_write`` makes
PARTIAL = re.compile(r"\..+\.(\d+)\.\w+\.partial")


def remove_stale_partials(folder: Path) -> None:
    """Remove the temporary outputs in ``folder`` of killed writes: those whose process (its id
    is in the name) is no longer running."""
    for partial in folder.glob(".*.partial"):
        match = PARTIAL.fullmatch(partial.name)
        if match and not _is_running(int(match[1])):
            _remove(partial)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def copy_hf_tokenizer(source: Path, folder: Path) -> bool:
    """Copy transformers' tokenizer files of ``source`` (vocab.json + merges.txt or
    tokenizer.json, and the files beside them) into ``folder`` as they are; False when it has
    none of them."""
    if not ((source / "vocab.json").is_file() or (source / TOKENIZER_JSON).is_file()):
        return False
    for name in HF_TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, Path(folder) / name)
    return True
