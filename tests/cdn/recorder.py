"""A stand-in CDN purge endpoint on loopback: records every request, answers a set status."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    server: ThreadingHTTPServer
    calls: list[Call] = field(default_factory=list)
    status: int = 200

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def keys(self) -> list[str]:
        return [c.headers.get("surrogate-key", "") for c in self.calls]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_recorder() -> Recorder:
    recorder: Recorder

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            recorder.calls.append(Call(self.command, self.path, headers, body))
            self.send_response(recorder.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_BAN = do_POST = do_PURGE = do_GET = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder = Recorder(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return recorder
