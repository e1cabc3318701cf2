"""A stand-in Hugging Face Hub on 127.0.0.1: serves folders as model repos, injects faults.

It speaks the endpoints huggingface_hub uses: ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` with
``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag`` and ``X-Linked-Size``, a 302 for LFS files to a second
server (another origin, like the Hub's CDN) that honours ``Range``, ``/api/models/{repo}/revision/{rev}``
and ``/api/models/{repo}/tree/{rev}``. Errors carry the Hub's ``X-Error-Code`` headers.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".gguf")


@dataclass
class RepoFile:
    path: Path
    size: int
    blob_id: str  # git's sha1 of "blob <size>\0" + content (of the LFS pointer for LFS files)
    sha256: str | None  # set for LFS files

    @classmethod
    def of(cls, path: Path) -> RepoFile:
        data = path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest() if path.suffix in LFS_SUFFIXES else None
        content = data if sha256 is None else (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\n"
            f"size {len(data)}\n").encode()
        blob_id = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        return cls(path, len(data), blob_id, sha256)


@dataclass
class Repo:
    files: dict[str, RepoFile]
    commit: str
    token: str | None = None  # when set, requests must carry "Authorization: Bearer <token>"
    gated: bool = False


@dataclass
class Faults:
    """What the servers do wrong; tests set these."""

    drop_after: int | None = None  # LFS GET: close the connection after this many bytes
    drops: int = 0  # how many LFS GETs are dropped before the rest succeed
    corrupt: bool = False  # LFS GET: flip bytes, keep the size
    delay: float = 0.0  # LFS GET: seconds to wait before the body
    stall_after: int | None = None  # LFS GET: send this many bytes, then nothing for 60 s
    status: dict[str, int] = field(default_factory=dict)  # path substring -> HTTP status


class StandInHub:
    """Start with ``with StandInHub() as hub:``; ``hub.endpoint`` goes in ``HF_ENDPOINT``."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.requests: list[tuple[str, str]] = []
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), self._handler(kind))
                         for kind in ("hub", "cdn")]
        for server in self._servers:
            server.daemon_threads = True
        self.endpoint, self.cdn = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)

    def add_repo(self, repo_id: str, folder: Path, *, commit: str | None = None,
                 token: str | None = None, gated: bool = False) -> Repo:
        files = {path.relative_to(folder).as_posix(): RepoFile.of(path)
                 for path in sorted(folder.rglob("*")) if path.is_file()}
        commit = commit or hashlib.sha1(json.dumps(
            {name: f.blob_id for name, f in files.items()}).encode()).hexdigest()
        self.repos[repo_id] = repo = Repo(files, commit, token, gated)
        return repo

    def __enter__(self) -> Self:
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def blob(self, sha256: str) -> RepoFile | None:
        return next((f for repo in self.repos.values() for f in repo.files.values()
                     if f.sha256 == sha256), None)

    def _handler(self, kind: str):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_HEAD(self):
                self.route(body=False)

            def do_GET(self):
                self.route(body=True)

            def route(self, body: bool):
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, f"{kind}:{path}"))
                for fragment, status in hub.faults.status.items():
                    if fragment in path:
                        return self.answer(status, b"", {"X-Error-Message": "injected"}, body)
                if kind == "cdn":
                    return self.serve_blob(path, body)
                if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path):
                    return self.api(match[1], match[2], body, tree=False)
                if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
                    return self.api(match[1], match[2], body, tree=True)
                if match := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    return self.resolve(match[1], match[2], match[3], body)
                self.answer(404, b"", {}, body)

            def repo_or_error(self, repo_id: str, revision: str | None, body: bool):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self.answer(401, b"", {"X-Error-Code": "RepoNotFound"}, body)
                    return None
                if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
                    code = "GatedRepo" if repo.gated else "RepoNotFound"
                    self.answer(401, b"", {"X-Error-Code": code}, body)
                    return None
                if revision not in (None, "main", repo.commit):
                    self.answer(404, b"", {"X-Error-Code": "RevisionNotFound"}, body)
                    return None
                return repo

            def api(self, repo_id: str, revision: str | None, body: bool, tree: bool):
                repo = self.repo_or_error(repo_id, revision, body)
                if repo is None:
                    return
                lfs = (lambda f, key: {key: f.sha256, "size": f.size, "pointerSize": 134})
                if tree:
                    payload = [{"type": "file", "oid": f.blob_id, "size": f.size, "path": name,
                                **({"lfs": lfs(f, "oid")} if f.sha256 else {})}
                               for name, f in repo.files.items()]
                else:
                    payload = {"_id": repo.commit[:24], "id": repo_id, "modelId": repo_id,
                               "sha": repo.commit, "private": repo.token is not None,
                               "gated": "auto" if repo.gated else False, "disabled": False,
                               "tags": [], "downloads": 0, "likes": 0,
                               "lastModified": "2026-01-01T00:00:00.000Z",
                               "createdAt": "2026-01-01T00:00:00.000Z",
                               "siblings": [{"rfilename": name, "size": f.size,
                                             "blobId": f.blob_id,
                                             **({"lfs": lfs(f, "sha256")} if f.sha256 else {})}
                                            for name, f in repo.files.items()]}
                self.answer(200, json.dumps(payload).encode(),
                            {"Content-Type": "application/json"}, body)

            def resolve(self, repo_id: str, revision: str, name: str, body: bool):
                repo = self.repo_or_error(repo_id, revision, body)
                if repo is None:
                    return
                commit = {"X-Repo-Commit": repo.commit}
                entry = repo.files.get(name)
                if entry is None:
                    return self.answer(404, b"", {**commit, "X-Error-Code": "EntryNotFound"}, body)
                if entry.sha256 is None:
                    return self.answer(200, entry.path.read_bytes(),
                                       {**commit, "ETag": f'"{entry.blob_id}"'}, body)
                self.answer(302, b"", {**commit, "Location": f"{hub.cdn}/lfs/{entry.sha256}",
                                       "ETag": f'"{entry.sha256}"',
                                       "X-Linked-Etag": f'"{entry.sha256}"',
                                       "X-Linked-Size": str(entry.size)}, body)

            def serve_blob(self, path: str, body: bool):
                entry = hub.blob(path.rsplit("/", 1)[-1])
                if entry is None:
                    return self.answer(404, b"", {}, body)
                data = entry.path.read_bytes()
                if hub.faults.corrupt:
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                start = 0
                if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                    start = int(match[1])
                headers = {"ETag": f'"{entry.sha256}"', "Accept-Ranges": "bytes"}
                status = 200
                if start:
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    data = data[start:]
                if body and hub.faults.delay:
                    time.sleep(hub.faults.delay)
                if body and hub.faults.stall_after is not None:
                    return self.stall(status, data, headers)
                if body and hub.faults.drops > 0 and hub.faults.drop_after is not None:
                    hub.faults.drops -= 1
                    return self.drop(status, data, headers)
                self.answer(status, data, headers, body)

            def head(self, status: int, data: bytes, headers: dict):
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()

            def stall(self, status: int, data: bytes, headers: dict):
                self.head(status, data, headers)
                self.wfile.write(data[: hub.faults.stall_after])
                self.wfile.flush()
                time.sleep(60)
                self.close_connection = True

            def drop(self, status: int, data: bytes, headers: dict):
                self.head(status, data, headers)
                self.wfile.write(data[: hub.faults.drop_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def answer(self, status: int, data: bytes, headers: dict, body: bool):
                self.head(status, data, headers)
                if body:
                    try:
                        self.wfile.write(data)
                    except (BrokenPipeError, ConnectionResetError):
                        self.close_connection = True

        return Handler
