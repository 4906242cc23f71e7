"""Local HTTP stand-ins the tests share: an OpenAI-compatible LLM judge and a folder served over http."""

from __future__ import annotations

import functools
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet handler that reads and answers JSON bodies."""

    def read_json(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        """``body`` as JSON; bytes are sent as they are (a malformed reply). A client that gave up waiting
        (a timeout test) is no error."""
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class Reply:
    """One answer of the fake judge: ``body`` (JSON, or bytes as they are), ``status`` and ``headers``, sent
    after ``delay`` seconds (a slow judge)."""

    body: Any
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Judge(JsonHandler):
    """An OpenAI-compatible judge, one thread per request. Each POST gets the next of ``script`` while there
    is one, then the Reply that ``scorer(body)`` makes where one is set, else ``reply`` with ``status``. With a
    ``gate`` (a ``threading.Barrier`` with a timeout) every request first waits there for the others: a
    concurrency test (a broken gate answers 503). ``seen`` records path, Authorization, body and arrival time
    (``time.monotonic``). ``judge()`` makes a subclass per server, so these class attributes are that server's."""

    reply: Any = None
    status = 200
    script: list[Reply] = []
    scorer: Callable[[dict[str, Any]], Reply] | None = None
    gate: threading.Barrier | None = None
    seen: list[dict[str, Any]] = []
    url = ""
    lock = threading.Lock()

    def do_POST(self) -> None:
        served, body = type(self), self.read_json()
        with served.lock:
            served.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body,
                                "at": time.monotonic()})
            scripted = served.script.pop(0) if served.script else None
        if served.gate is not None:
            try:
                served.gate.wait()
            except threading.BrokenBarrierError:
                scripted = Reply({"error": "the gate broke: fewer requests came at once than it waits for"}, 503)
        if scripted is None:
            scripted = served.scorer(body) if served.scorer else Reply(served.reply, served.status)
        time.sleep(scripted.delay)
        self.send_json(scripted.status, scripted.body, scripted.headers)


def completion(content: str) -> dict[str, Any]:
    """A chat completions reply whose message is ``content``."""
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


@contextmanager
def _serving(handler: Any, tls_dir: Path | None = None, threaded: bool = False) -> Iterator[str]:
    server = (ThreadingHTTPServer if threaded else HTTPServer)(("127.0.0.1", 0), handler)
    if tls_dir:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_dir / "tls.crt", tls_dir / "tls.key")
        server.socket = context.wrap_socket(server.socket, server_side=True)
    # A short poll: shutdown() waits for the loop to notice, and tests start many servers.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
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
    handler = type("ServedJudge", (Judge,), {"seen": [], "script": [], "status": 200, "lock": threading.Lock()})
    with _serving(handler, threaded=True) as base:
        handler.url = f"{base}/v1"
        yield handler


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """``folder``'s files over http (content types from their extensions); yields the base URL."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    with _serving(handler) as base:
        yield base
