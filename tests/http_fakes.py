"""Local HTTP stand-ins the tests share: an OpenAI-compatible LLM judge and a folder served over http."""

from __future__ import annotations

import functools
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet handler that reads and answers JSON bodies."""

    def read_json(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def send_json(self, status: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


class Judge(JsonHandler):
    """Answers every POST with ``reply`` and ``status``; records path, Authorization and body in ``seen``.
    ``judge()`` makes a subclass per server, so those class attributes are that server's."""

    reply: Any = None
    status = 200
    seen: list[dict[str, Any]] = []
    url = ""

    def do_POST(self) -> None:
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": self.read_json()})
        self.send_json(self.status, self.reply)


def completion(content: str) -> dict[str, Any]:
    """A chat completions reply whose message is ``content``."""
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


@contextmanager
def _serving(handler: Any, tls_dir: Path | None = None) -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), handler)
    if tls_dir:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_dir / "tls.crt", tls_dir / "tls.key")
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls_dir else 'http'}://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@contextmanager
def serve_https(handler: Any, tls_dir: Path) -> Iterator[str]:
    """``handler`` over https with ``tls_dir``'s tls.crt and tls.key (``tests.conftest.make_tls``), for callers
    that insist on TLS, such as the apiserver calling a webhook; yields the base URL."""
    with _serving(handler, tls_dir) as base:
        yield base


@contextmanager
def judge() -> Iterator[type[Judge]]:
    handler = type("ServedJudge", (Judge,), {"seen": [], "status": 200})
    with _serving(handler) as base:
        handler.url = f"{base}/v1"
        yield handler


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """``folder``'s files over http (content types from their extensions); yields the base URL."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    with _serving(handler) as base:
        yield base
