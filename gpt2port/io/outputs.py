"""Writing outputs so that a reader never sees half of them: a temporary folder or file, renamed
when done, with the permissions the user's umask gives."""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import OutputError


def write_folder(destination: Path, fill: Callable[[Path], object], *,
                 needs: int | None = None) -> Path:
    """``fill(folder)`` a temporary folder beside ``destination``, then rename it into place
    (``needs``: about how many bytes it takes, for the message when the disk fills up).

    Raises:
        OutputError: when ``destination`` exists and is not empty (nothing is overwritten, also
            when another process writes it meanwhile), its folder cannot be written, or the
            disk fills up (the partial output is removed).
    """
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise _exists(destination)
    return _write(destination, fill, _make_folder, _rename_folder, needs)


def write_file(destination: Path, fill: Callable[[Path], object], *,
               needs: int | None = None) -> Path:
    """``fill(path)`` a temporary file beside ``destination``, then move it into place.

    Raises:
        OutputError: when ``destination`` exists (nothing is overwritten, also when another
            process writes it meanwhile), its folder cannot be written, or the disk fills up
            (the partial output is removed).
    """
    destination = Path(destination)
    if destination.exists():
        raise _exists(destination)

    return _write(destination, fill, _make_file, _link_file, needs)


def _make_folder(path: Path) -> None:
    path.mkdir(mode=0o700)


def _make_file(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _exists(destination: Path) -> OutputError:
    if destination.is_dir():
        return OutputError(f"{destination}: already exists and is not empty",
                           hint="choose a new output folder, or remove this one")
    return OutputError(f"{destination}: already exists",
                       hint="choose a new file name, or remove this file")


def _rename_folder(partial: Path, destination: Path) -> None:
    """Rename the finished folder into place; an empty folder there is replaced, anything else
    (another process's output, finished meanwhile) is left and reported."""
    try:
        os.rename(partial, destination)
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise _exists(destination) from None
        raise


def _link_file(partial: Path, destination: Path) -> None:
    """Give the finished file its name without replacing one that appeared meanwhile: a hard
    link fails if the name exists (a rename would silently replace it)."""
    try:
        os.link(partial, destination)
    except FileExistsError:
        raise _exists(destination) from None
    except OSError as error:  # a filesystem without hard links
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                               errno.EXDEV):
            raise
        if destination.exists():
            raise _exists(destination) from None
        os.replace(partial, destination)


def _write(destination: Path, fill: Callable[[Path], object], make: Callable[[Path], None],
           place: Callable[[Path, Path], None], needs: int | None) -> Path:
    """Make a partial output with ``make`` (under a name chosen first, so that an interrupt at
    any moment, the creation's included, removes it), fill it, give it the permissions the
    umask gives new files, ``place`` it at ``destination``."""
    partial = destination.parent / (f".{destination.name}.{os.getpid()}."
                                    f"{secrets.token_hex(6)}.partial")
    try:
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_partials(destination.parent)
            make(partial)
        except OSError as error:
            raise OutputError(f"{destination}: cannot write there ({error.strerror or error})",
                              hint="choose a folder you can write to") from None
        fill(partial)
        _permit(partial, current_umask())
        place(partial, destination)
    except Exception as error:
        if _is_disk_full(error):
            raise _disk_full(destination, needs) from None
        raise
    finally:
        _remove(partial)
    return destination


def _disk_full(destination: Path, needs: int | None) -> OutputError:
    """The message for a disk that filled up: what it needed and what is free."""
    try:
        free = shutil.disk_usage(destination.parent).free
    except OSError:
        free = None
    space = "" if needs is None else f": it needs about {_megabytes(needs)}" + (
        "" if free is None else f" and {_megabytes(free)} are free there")
    return OutputError(f"{destination}: no space left to write it{space}; nothing was left "
                       "behind", hint="free some space, or write to another disk")


def _megabytes(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


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
    """Remove a partial output if it is there; a cleanup never hides the error being raised."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass  # never made (its folder is a file, say), or already gone


# What a full disk (or the file-size limit) looks like from the writers: errno, safetensors'
# Rust error text, numpy's short write.
# how the writers gpt2port calls say a write fell short: Rust's os error, Python's, numpy's and
# torch.save's (PyTorchStreamWriter's "unexpected pos N vs M" when the disk is full)
_DISK_FULL = re.compile(r"os error (27|28|122)|No space left|File too large|requested and \d+ "
                        r"written|unexpected pos \d+ vs \d+")


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


#END
