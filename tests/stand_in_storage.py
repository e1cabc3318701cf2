"""A stand-in for OpenAI's public storage on 127.0.0.1: static files with ``Range``, and faults
(``Faults.drop_after``/``drops`` cut the checkpoint's data file; ``status`` answers any path)."""

from __future__ import annotations

import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from stand_in_hub import Faults


class StandInStorage:
    """``with StandInStorage({"124M": folder}) as storage:``; ``storage.endpoint`` is the base."""

    def __init__(self, releases: dict[str, Path]):
        self.releases = releases
        self.faults = Faults()
        self.requests: list[tuple[str, str]] = []  # (path, Range header)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/gpt-2/models"

    def __enter__(self) -> Self:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        storage = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                storage.requests.append((self.path, self.headers.get("Range", "")))
                match = re.fullmatch(r"/gpt-2/models/([^/]+)/([^/]+)", self.path)
                folder = storage.releases.get(match[1]) if match else None
                path = folder / match[2] if folder else None
                status = next((code for part, code in storage.faults.status.items()
                               if part in self.path), None)
                if status or path is None or not path.is_file():
                    return self.reply(status or 404, b"", {})
                data = path.read_bytes()
                start, status, headers = 0, 200, {"Accept-Ranges": "bytes"}
                if found := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                    start, status = int(found[1]), 206
                    if start >= len(data):
                        return self.reply(416, b"", {})
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                data = data[start:]
                faults = storage.faults
                if faults.delay:
                    time.sleep(faults.delay)
                if faults.drops > 0 and faults.drop_after is not None and ".data-" in self.path:
                    faults.drops -= 1
                    return self.reply(status, data, headers, cut=faults.drop_after)
                self.reply(status, data, headers)

            def reply(self, status, data, headers, cut=None):
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data if cut is None else data[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        return Handler
