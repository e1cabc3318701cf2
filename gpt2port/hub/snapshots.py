"""Downloads from the Hugging Face Hub through huggingface_hub, every file checked by hash.

huggingface_hub brings the cache, resume, progress bars, ``HF_TOKEN`` and ``HF_ENDPOINT``; this
module chooses the files, checks each against the Hub's own hash (and a preset's pinned one), and
turns every failure into one of the package's errors.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
from filelock import Timeout
from huggingface_hub import HfApi, constants, errors, hf_hub_download, try_to_load_from_cache
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import WeakFileLock

from ..adapters.lora import CONFIG_FILE as ADAPTER_CONFIG
from ..adapters.lora import WEIGHTS_FILES as ADAPTER_FILES
from ..console.phases import phase
from ..errors import (
    AccessError,
    DiskFullError,
    DownloadError,
    IntegrityError,
    NetworkError,
    NotFoundError,
    OfflineError,
)
from ..formats.huggingface import WEIGHTS_FILES
from ..io.readers import read_json
from ..text.vocabulary import HF_TOKENIZER_FILES

CONFIG = "config.json"
TOKENIZER = ("vocab.json", "merges.txt")
OPTIONAL = ("generation_config.json",)
# what other layouts keep beside their weights (the tokenizer in other names, their configs)
OTHER_FILES = (*(name for name in HF_TOKENIZER_FILES if name not in TOKENIZER), "encoder.json",
               "vocab.bpe", "hparams.json")
# a file of one of these endings is a weights file --file may name
WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")
FORCE_HINT = "run again with --force to download it afresh"
TOKEN_HINT = ("if the repository is private or gated, accept its terms on the Hub and set "
              "HF_TOKEN (or run `hf auth login`)")


def download(repo_id: str, *, revision: str | None = None, cache_dir: str | Path | None = None,
             force: bool = False, offline: bool = False, pinned: dict | None = None,
             filename: str | None = None) -> Path:
    """Fetch what a GPT-2 load needs into the huggingface_hub cache; return the snapshot folder,
    or with ``filename`` that one weights file of the repo (with the config and tokenizer files
    beside it, where the repo has them).

    Every file is checked against the Hub's size and hash (sha256 for LFS files, the git blob id
    for the others) and against ``pinned`` {file: (size, sha256)}; a file that fails is removed
    from the cache. With ``force`` everything is fetched afresh, and a failed file once more.

    Raises:
        OfflineError, NotFoundError, AccessError, NetworkError, IntegrityError, DiskFullError.
    """
    pinned = pinned or {}
    if offline or constants.is_offline_mode():
        found = cached_snapshot(repo_id, revision=revision, cache_dir=cache_dir,
                                filename=filename)
        if found is None:
            raise OfflineError(f"{repo_id}{f'/{filename}' if filename else ''}: not in the "
                               "cache, and offline mode is on",
                               hint="run once with network access, or drop --offline")
        folder = found.parent if filename else found
        for name in pinned:
            try:
                _check(folder / name, None, pinned[name])
            except IntegrityError:
                _remove_from_cache(folder / name)
                raise
        return found
    remove_stale_partials(repo_id, cache_dir)
    with hub_errors(repo_id, revision=revision):
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or ()}
    weights = filename or next((name for name in (*WEIGHTS_FILES, *ADAPTER_FILES)
                                if name in siblings), None)
    _check_listing(repo_id, info.sha, siblings, weights, named=filename is not None)
    beside = [name for name in (CONFIG, ADAPTER_CONFIG, *TOKENIZER, *OPTIONAL, *OTHER_FILES)
              if name in siblings]
    names = [weights, *(name for name in beside if name != weights)]
    revision = revision or "main"  # by name, so the cache records the ref for offline use
    phase("downloading")
    try:
        paths = {name: _fetch(repo_id, revision, siblings[name], cache_dir, force,
                              pinned.get(name)) for name in names}
        if weights.endswith(".index.json"):
            shards = sorted(set(read_json(paths[weights]).get("weight_map", {}).values()))
            for shard in shards:
                if shard not in siblings:
                    raise NotFoundError(f"{repo_id}: shard {shard!r} named in {weights} is not "
                                        "on the Hub")
                _fetch(repo_id, revision, siblings[shard], cache_dir, force, pinned.get(shard))
    except BaseException:  # Ctrl-C and SIGTERM too: no partial file of ours is left behind
        remove_stale_partials(repo_id, cache_dir)
        raise
    return paths[weights] if filename else paths[weights].parent


def download_tokenizer(repo_id: str, *, revision: str | None = None,
                       cache_dir: str | Path | None = None, offline: bool = False) -> Path:
    """Fetch a Hub repo's tokenizer files alone (and its config.json, which names special ids)
    into the huggingface_hub cache; return the snapshot folder.

    Raises:
        OfflineError, NotFoundError, AccessError, NetworkError, IntegrityError, DiskFullError.
    """
    names = (*HF_TOKENIZER_FILES, CONFIG)
    if offline or constants.is_offline_mode():
        found = [try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision)
                 for name in names]
        found = [Path(path) for path in found if isinstance(path, str)]
        if not found:
            raise OfflineError(f"{repo_id}: no tokenizer of it in the cache, and offline mode "
                               "is on", hint="run once with network access, or drop --offline")
        return found[0].parent
    with hub_errors(repo_id, revision=revision):
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or ()}
    present = [name for name in names if name in siblings and name != CONFIG]
    if not present:
        raise NotFoundError(f"{repo_id}@{info.sha}: no tokenizer files in the repository "
                            f"(looked for {', '.join(HF_TOKENIZER_FILES)})",
                            hint="name a repository or folder that holds its tokenizer")
    phase("downloading")
    paths = [_fetch(repo_id, revision or "main", siblings[name], cache_dir, False, None)
             for name in (*present, *([CONFIG] if CONFIG in siblings else []))]
    return paths[0].parent


def _check_listing(repo_id: str, commit: str, siblings: dict, weights: str | None, *,
                   named: bool) -> None:
    """Raise NotFoundError unless the repo holds the weights file (and, for Hugging Face's own
    names, a config), naming the weights files it does hold."""
    held = sorted(name for name in siblings if name.endswith(WEIGHTS_SUFFIXES))
    listed = f"it holds {', '.join(held)}" if held else "it holds no weights file"
    if named and weights not in siblings:
        raise NotFoundError(f"{repo_id}@{commit}: no file {weights!r} in the repository; {listed}",
                            hint="pass one of those to --file (filename=)")
    config = ADAPTER_CONFIG if weights in ADAPTER_FILES else CONFIG
    if not named and (weights is None or config not in siblings):
        raise NotFoundError(f"{repo_id}@{commit}: no {config} or weights file of Hugging Face's "
                            f"names on the Hub (looked for "
                            f"{', '.join((*WEIGHTS_FILES, *ADAPTER_FILES))}); {listed}",
                            hint="name the weights file with --file (filename=)" if held else
                            "is this a GPT-2 model repository?")


def remove_stale_partials(repo_id: str, cache_dir: str | Path | None = None) -> list[Path]:
    """Delete the ``.incomplete`` files that killed downloads left in the repo's cache.

    huggingface_hub names them ``<etag>.<random>.incomplete`` and holds ``.locks/.../<etag>.lock``
    while it writes one, so a file whose lock can be taken at once belongs to no live download.
    """
    root = Path(cache_dir or constants.HF_HUB_CACHE)
    folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    removed = []
    for path in sorted((root / folder / "blobs").glob("*.incomplete")):
        lock = root / ".locks" / folder / f"{path.name.split('.')[0]}.lock"
        try:
            with WeakFileLock(lock, timeout=0.1):
                path.unlink(missing_ok=True)
                removed.append(path)
        except (Timeout, OSError):
            continue  # another process is downloading it right now
    return removed


def cached_snapshot(repo_id: str, *, revision: str | None = None,
                    cache_dir: str | Path | None = None, filename: str | None = None
                    ) -> Path | None:
    """The cached snapshot folder if it holds a config and complete weights (with ``filename``:
    that file, if cached); no network call."""
    def cached(name: str) -> Path | None:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision)
        return Path(found) if isinstance(found, str) else None

    if filename is not None:
        return cached(filename)
    weights = next((path for path in map(cached, (*WEIGHTS_FILES, *ADAPTER_FILES))
                    if path is not None), None)
    config = cached(ADAPTER_CONFIG if weights is not None and weights.name in ADAPTER_FILES
                    else CONFIG)
    if config is None or weights is None:
        return None
    if weights.name.endswith(".index.json"):
        shards = set(read_json(weights).get("weight_map", {}).values())
        if any(cached(shard) is None for shard in shards):
            return None
    return config.parent


def _fetch(repo_id: str, revision: str, sibling, cache_dir, force: bool,
           pinned: tuple[int, str] | None) -> Path:
    """Download one file (or take it from the cache) and check it; retry once under ``force``."""
    name = sibling.rfilename
    tries_left = 2 if force else 1
    while True:
        tries_left -= 1
        with hub_errors(repo_id, name):
            path = Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir,
                                        force_download=force))
        try:
            _check(path, sibling, pinned)
            return path
        except IntegrityError:
            _remove_from_cache(path)
            if not tries_left:
                raise


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(2**24):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_id(path: Path) -> str:
    """The id git gives a file's content: sha1 of ``blob <size>\\0<bytes>``."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _check(path: Path, sibling, pinned: tuple[int, str] | None) -> None:
    """Size and sha256 against the Hub's listing (``sibling``) and the pinned (size, sha256);
    for a non-LFS file the git blob id. Hashes the file once.

    Raises:
        IntegrityError: naming the file, which source it disagrees with, expected and found.
    """
    name, size = path.name, path.stat().st_size
    expectations = []
    if sibling is not None:
        lfs = sibling.lfs
        expectations.append(("the Hub", lfs.size if lfs else sibling.size,
                             lfs.sha256 if lfs else None))
    if pinned:
        expectations.append(("the official release", *pinned))
    found_sha256 = None
    for source, expected_size, expected_sha256 in expectations:
        if expected_size is not None and size != expected_size:
            raise IntegrityError(f"{name}: {size} bytes, {source} has {expected_size}; "
                                 "the file was removed from the cache", hint=FORCE_HINT)
        if expected_sha256:
            found_sha256 = found_sha256 or file_sha256(path)
            if found_sha256 != expected_sha256:
                raise IntegrityError(f"{name}: sha256 {found_sha256} differs from {source}'s "
                                     f"{expected_sha256}; the file was removed from the cache",
                                     hint=FORCE_HINT)
    if sibling is not None and not sibling.lfs and sibling.blob_id and (
            git_blob_id(path) != sibling.blob_id):
        raise IntegrityError(f"{name}: content differs from the Hub's git blob "
                             f"{sibling.blob_id}; the file was removed from the cache",
                             hint=FORCE_HINT)


def _remove_from_cache(path: Path) -> None:
    """Remove a snapshot entry and the blob it points to."""
    blob = path.resolve()
    for each in {blob, path}:
        try:
            os.unlink(each)
        except FileNotFoundError:
            pass


@contextmanager
def hub_errors(repo_id: str, filename: str | None = None, *,
               revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's and the HTTP library's exceptions into the package's errors."""
    what = f"{repo_id}/{filename}" if filename else repo_id
    try:
        yield
    except errors.GatedRepoError:
        raise AccessError(f"{what}: the repository is gated", hint=TOKEN_HINT) from None
    except errors.RevisionNotFoundError:
        raise NotFoundError(f"{what}: no such revision" + (f" {revision!r}" if revision else ""),
                            hint="check --revision (a branch, tag or full commit id)") from None
    except errors.RepositoryNotFoundError:
        raise NotFoundError(f"{what}: repository not found, or private", hint=TOKEN_HINT) from None
    except errors.RemoteEntryNotFoundError:
        raise NotFoundError(f"{what}: no such file in the repository") from None
    except errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise AccessError(f"{what}: the Hub refused access (HTTP {status})",
                              hint=TOKEN_HINT) from None
        raise NetworkError(f"{what}: the Hub answered HTTP {status}",
                           hint="try again later") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as error:
        raise _unreachable(what, error) from None
    except httpx2.TimeoutException:
        raise NetworkError(f"{what}: the server did not answer in time",
                           hint="try again; HF_HUB_DOWNLOAD_TIMEOUT and HF_HUB_ETAG_TIMEOUT set "
                           "the time limits in seconds") from None
    except httpx2.HTTPError as error:
        raise NetworkError(f"{what}: the connection failed ({type(error).__name__}: {error})",
                           hint="check the network (or HF_ENDPOINT) and run again; "
                           "completed files are kept") from None
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise DiskFullError(f"{what}: no space left to write the download ({error.strerror})",
                                hint="free some space or point --cache-dir (or HF_HOME) at a "
                                "larger disk") from None
        if "Consistency check failed" in str(error):
            raise NetworkError(f"{what}: the download ended early", hint="run again") from None
        raise DownloadError(f"{what}: {error}") from None
    except ValueError as error:  # huggingface_hub's "Force download failed" wraps the cause
        if error.__cause__ is not None:
            with hub_errors(repo_id, filename):
                raise error.__cause__ from None
        raise


def _unreachable(what: str, error: Exception) -> DownloadError:
    cause = error.__cause__
    if isinstance(cause, (errors.OfflineModeIsEnabled,)) or constants.is_offline_mode():
        return OfflineError(f"{what}: not in the cache, and offline mode is on",
                            hint="run once with network access, or unset HF_HUB_OFFLINE")
    if isinstance(cause, httpx2.TimeoutException):
        return NetworkError(f"{what}: the Hub did not answer in time, and the file is not cached",
                            hint="try again; HF_HUB_ETAG_TIMEOUT sets the limit in seconds")
    return NetworkError(f"{what}: the Hub cannot be reached, and the file is not cached",
                        hint="check the network (or HF_ENDPOINT), or use a cached model")
