"""OpenAI's original GPT-2 releases (the TF checkpoints), fetched from OpenAI's public storage.

Each file is streamed to ``NAME.partial`` and renamed once its size matches what the server
announced; a ``.partial`` left by an interrupted run is resumed with an HTTP ``Range`` request.
The tensors' own CRC-32Cs are checked when the checkpoint is read.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock

from ..errors import AccessError, ConfigError, DiskFullError, NetworkError, NotFoundError
from ..formats.openai import RELEASE_FILES, SIZES

STORAGE = "https://openaipublic.blob.core.windows.net/gpt-2/models"
ENDPOINT_VARIABLE = "GPT2PORT_OPENAI_ENDPOINT"  # another base URL (mirrors, tests)
TIMEOUT_VARIABLE = "GPT2PORT_DOWNLOAD_TIMEOUT"  # seconds without data before giving up
CHUNK_BYTES = 1 << 20
RESUME_HINT = "run the same command again: the finished part is kept and resumed"


def default_folder(size: str) -> Path:
    """``$GPT2PORT_CACHE/openai/SIZE``, by default under ``~/.cache/gpt2port``."""
    root = os.environ.get("GPT2PORT_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2port"
    return Path(root) / "openai" / size


def download_release(size: str = "124M", *, folder: str | Path | None = None,
                     force: bool = False) -> Path:
    """Fetch every file of OpenAI's ``size`` release into ``folder``; files already complete are
    kept unless ``force``.

    Raises:
        ConfigError: for a size OpenAI did not release.
        DownloadError: NotFoundError, AccessError, NetworkError or DiskFullError, with a hint.
    """
    if size not in SIZES:
        raise ConfigError(f"no OpenAI release named {size!r}", hint=f"sizes: {', '.join(SIZES)}")
    folder = Path(folder) if folder is not None else default_folder(size)
    folder.mkdir(parents=True, exist_ok=True)
    base = os.environ.get(ENDPOINT_VARIABLE, STORAGE).rstrip("/")
    with FileLock(folder / ".lock"):  # a second process waits, then finds the files complete
        for name in RELEASE_FILES:
            path = folder / name
            if force:
                path.unlink(missing_ok=True)
                path.with_name(name + ".partial").unlink(missing_ok=True)
            if not path.is_file():
                fetch(f"{base}/{size}/{name}", path)
    return folder


def fetch(url: str, path: Path) -> None:
    """Stream ``url`` to ``path`` via ``path.partial``, resuming a partial file."""
    partial = path.with_name(path.name + ".partial")
    start = partial.stat().st_size if partial.is_file() else 0
    timeout = float(os.environ.get(TIMEOUT_VARIABLE, "30"))
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status != 206:
                start = 0  # the server sent the whole file
            total = _total_size(response, start)
            with open(partial, "ab" if start else "wb") as file:
                while chunk := response.read(CHUNK_BYTES):
                    file.write(chunk)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # the partial file is wrong; start over next time
            partial.unlink(missing_ok=True)
            raise NetworkError(f"{url}: the server refused to resume at byte {start}",
                               hint="run again to download from the start") from None
        if error.code == 404:
            raise NotFoundError(f"{url}: not found (HTTP 404)",
                                hint="check the size, or the endpoint in "
                                f"{ENDPOINT_VARIABLE}") from None
        if error.code in (401, 403):
            raise AccessError(f"{url}: access refused (HTTP {error.code})") from None
        raise NetworkError(f"{url}: the server answered HTTP {error.code}",
                           hint="try again later") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError,
            http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise NetworkError(f"{url}: the connection failed ({reason})", hint=RESUME_HINT) from None
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            partial.unlink(missing_ok=True)
            raise DiskFullError(f"{path}: no space left to write the download ({error.strerror})",
                                hint="free some space, or choose --output on a larger disk") from None
        raise NetworkError(f"{url}: the download failed ({error})", hint=RESUME_HINT) from None
    received = partial.stat().st_size
    if total is not None and received != total:
        raise NetworkError(f"{url}: the download ended at byte {received:,} of {total:,}",
                           hint=RESUME_HINT)
    os.replace(partial, path)


def _total_size(response, start: int) -> int | None:
    """The whole file's size, from ``Content-Range`` or ``Content-Length``."""
    content_range = response.headers.get("Content-Range", "")
    if match := re.fullmatch(r"bytes \d+-\d+/(\d+)", content_range.strip()):
        return int(match[1])
    length = response.headers.get("Content-Length")
    return start + int(length) if length is not None and length.isdigit() else None
