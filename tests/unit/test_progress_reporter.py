"""The trainer's ProgressReporter against a real local HTTPS server: body, token, TLS, throttle, retries."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from lora_contract.api import ProgressReport, TrainerStatus
from lora_contract.progress import StepEvent, TrainEvent, initial_status, reduce
from lora_trainer.progress_reporter import ProgressReporter

URL_PATH = "/v1/namespaces/ns/loratrainingjobs/run/report"


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


def _self_signed(folder: Path, name: str) -> Cert:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-days", "1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return Cert(cert, key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cert, Cert]:
    """The operator's certificate (the one the trainer trusts) and one from another CA."""
    folder = tmp_path_factory.mktemp("certs")
    return _self_signed(folder, "operator"), _self_signed(folder, "other")


@dataclass(frozen=True)
class Request:
    time: float
    headers: dict[str, str]
    body: bytes
    answer: int

    @property
    def report(self) -> ProgressReport:
        return ProgressReport.model_validate_json(self.body)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = self.server.owner.answer
        self.server.owner.record(Request(time.monotonic(), dict(self.headers), body, answer))
        payload = b"accepted" if answer < 300 else f"refused with {answer}".encode()
        self.send_response(answer)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ProgressServer


class ProgressServer:
    """An HTTPS endpoint that records every request; ``answer`` sets its status code, ``stop`` makes the
    port refuse connections until ``start`` again."""

    def __init__(self, cert: Cert) -> None:
        self.cert = cert
        self.answer = 202
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self.port = 0
        self._httpd: _Server | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{URL_PATH}"

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def received(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def start(self) -> None:
        httpd = _Server(("127.0.0.1", self.port), _Handler)
        httpd.owner = self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert.cert, self.cert.key)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self.port, self._httpd = httpd.server_port, httpd
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


@pytest.fixture
def server(certs: tuple[Cert, Cert]) -> Iterator[ProgressServer]:
    srv = ProgressServer(certs[0])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("token-1\n")
    return path


@pytest.fixture
def reporters() -> Iterator[list[ProgressReporter]]:
    """Reporters a test made, closed at its end so that their flushers stop."""
    made: list[ProgressReporter] = []
    yield made
    for reporter in made:
        reporter.close(initial_status())


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _status_after(*events: Any) -> TrainerStatus:
    status = initial_status()
    for event in events:
        status = reduce(status, event)
    return status


def _strictly_increasing(requests: list[Request]) -> bool:
    sequences = [r.report.sequence for r in requests]
    return all(a < b for a, b in pairwise(sequences))


def _no_nulls(value: Any) -> bool:
    if isinstance(value, dict):
        return all(v is not None and _no_nulls(v) for v in value.values())
    if isinstance(value, list):
        return all(_no_nulls(v) for v in value)
    return True


def test_reports_carry_the_latest_state_and_the_current_token(
    server: ProgressServer, token: Path, certs: tuple[Cert, Cert], reporters: list[ProgressReporter]
) -> None:
    reporter = ProgressReporter(server.url, token, certs[0].cert, min_interval=0.05)
    reporters.append(reporter)
    first = StepEvent(index=1, state="Active")
    status = _status_after(first)
    reporter.emit(first, status)
    [request] = wait_for("the first report", server.received)
    assert request.headers["Authorization"] == "Bearer token-1"
    assert request.headers["Content-Type"] == "application/json"
    assert request.report.trainer == status
    raw = json.loads(request.body)
    assert set(raw) == {"sequence", "trainer"} and "stepSummary" in raw["trainer"] and _no_nulls(raw)

    token.write_text("token-2\n")  # the kubelet rotated it
    second = StepEvent(index=1, state="Completed", message="54 train / 6 validation")
    status = reduce(status, second)
    reporter.emit(second, status)
    wait_for("the second report", lambda: reporter.writes == 2)
    final = reduce(status, StepEvent(index=0, state="Active"))
    reporter.close(final)

    requests = server.received()
    assert [r.headers["Authorization"] for r in requests] == ["Bearer token-1", "Bearer token-2", "Bearer token-2"]
    assert requests[1].report.trainer.steps[1].message == "54 train / 6 validation"
    assert requests[-1].report.trainer == final
    assert _strictly_increasing(requests)
    assert (reporter.writes, reporter.failures) == (3, 0)


def test_progress_between_boundaries_is_throttled_and_coalesced(
    server: ProgressServer, token: Path, certs: tuple[Cert, Cert], reporters: list[ProgressReporter]
) -> None:
    interval = 0.2
    reporter = ProgressReporter(server.url, token, certs[0].cert, min_interval=interval)
    reporters.append(reporter)
    status = _status_after(StepEvent(index=4, state="Active"))
    started = time.monotonic()
    for step in range(1, 101):
        event = TrainEvent(step=step, total_steps=100, loss=2.0)
        status = reduce(status, event)
        reporter.emit(event, status)
    spent = time.monotonic() - started
    wait_for("the last training step", lambda: any(r.report.trainer.training_step == 100
                                                   for r in server.received()))
    requests = server.received()
    assert len(requests) <= spent / interval + 3  # one immediately, then at most one per interval
    assert requests[-1].report.trainer == status  # the latest state, not every one
    assert _strictly_increasing(requests)


def test_failures_back_off_and_the_latest_state_arrives_once_the_operator_is_back(
    server: ProgressServer, token: Path, certs: tuple[Cert, Cert], reporters: list[ProgressReporter]
) -> None:
    server.answer = 503
    reporter = ProgressReporter(server.url, token, certs[0].cert, min_interval=0.01, backoff_base=0.05,
                                backoff_cap=0.4)
    reporters.append(reporter)
    status, tries = initial_status(), 0
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # step boundaries keep coming: no immediate POST in a backoff
        tries += 1
        event = StepEvent(index=0, state="Active", message=f"try {tries}")
        status = reduce(status, event)
        reporter.emit(event, status)
        time.sleep(0.005)
    failed = server.received()
    # Backoff 0.05, 0.1, 0.2, 0.4, 0.4, ... s: about 6 attempts in 1.5 s; without it, over a hundred.
    assert 2 <= len(failed) <= 12
    assert all(r.answer == 503 for r in failed)

    server.answer = 202
    delivered = wait_for("the latest state delivered", lambda: [r for r in server.received()
                                                                 if r.answer == 202 and r.report.trainer == status])
    assert reporter.writes >= 1 and reporter.failures >= len(failed)
    assert _strictly_increasing(server.received())  # retries are new reports with new sequence numbers
    assert delivered[0].report.sequence > failed[-1].report.sequence


def test_connection_refused_is_retried_and_never_raises(
    server: ProgressServer, token: Path, certs: tuple[Cert, Cert], reporters: list[ProgressReporter]
) -> None:
    server.stop()
    reporter = ProgressReporter(server.url, token, certs[0].cert, min_interval=0.01, backoff_base=0.05,
                                backoff_cap=0.1)
    reporters.append(reporter)
    status = _status_after(StepEvent(index=1, state="Active"))
    reporter.emit(StepEvent(index=1, state="Active"), status)
    wait_for("two refused attempts", lambda: reporter.failures >= 2)
    server.start()  # the same port again
    wait_for("the state delivered", lambda: [r for r in server.received() if r.report.trainer == status])
    assert reporter.writes >= 1


@pytest.mark.parametrize("answer", [400, 401, 403, 500])
def test_error_answers_are_failures_that_are_retried_and_logged_with_the_body(
    answer: int, server: ProgressServer, token: Path, certs: tuple[Cert, Cert], reporters: list[ProgressReporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.answer = answer
    reporter = ProgressReporter(server.url, token, certs[0].cert, min_interval=0.01, backoff_base=0.02,
                                backoff_cap=0.05)
    reporters.append(reporter)
    reporter.emit(StepEvent(index=1, state="Active"), _status_after(StepEvent(index=1, state="Active")))
    wait_for("retries", lambda: reporter.failures >= 3)
    assert len(server.received()) >= 3 and reporter.writes == 0
    assert f"refused with {answer}" in caplog.text and "termination message" in caplog.text


def test_the_certificate_is_verified_against_the_given_ca(
    token: Path, certs: tuple[Cert, Cert], reporters: list[ProgressReporter]
) -> None:
    impostor = ProgressServer(certs[1])  # a certificate the trainer was not told to trust
    impostor.start()
    try:
        reporter = ProgressReporter(impostor.url, token, certs[0].cert, min_interval=0.01, backoff_base=0.02,
                                    backoff_cap=0.05)
        reporters.append(reporter)
        reporter.emit(StepEvent(index=1, state="Active"), _status_after(StepEvent(index=1, state="Active")))
        wait_for("a failed handshake", lambda: reporter.failures >= 1)
        reporter.close(initial_status())  # nothing raised
        assert impostor.received() == [] and reporter.writes == 0  # no token was ever sent to it
    finally:
        impostor.stop()


def test_close_delivers_the_final_state(server: ProgressServer, token: Path, certs: tuple[Cert, Cert]) -> None:
    reporter = ProgressReporter(server.url, token, certs[0].cert, min_interval=60)
    final = _status_after(StepEvent(index=9, state="Completed"))
    reporter.close(final)
    assert [r.report.trainer for r in server.received()] == [final]
    reporter.emit(StepEvent(index=0, state="Active"), initial_status())  # late events are ignored
    time.sleep(0.1)
    assert len(server.received()) == 1


def test_close_returns_in_bounded_time_when_the_operator_is_down(
    server: ProgressServer, token: Path, certs: tuple[Cert, Cert]
) -> None:
    server.stop()
    refused = ProgressReporter(server.url, token, certs[0].cert, backoff_base=0.05)
    started = time.monotonic()
    refused.close(initial_status())
    assert time.monotonic() - started < 15 and refused.failures == 3  # three tries, then give up

    with socket.socket() as silent:  # accepts connections but never answers: each try would time out
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"https://127.0.0.1:{silent.getsockname()[1]}{URL_PATH}"
        hanging = ProgressReporter(url, token, certs[0].cert, timeout=10, close_timeout=1)
        started = time.monotonic()
        hanging.close(initial_status())
        assert time.monotonic() - started < 15 and hanging.failures >= 1 and hanging.writes == 0


def test_from_env(server: ProgressServer, token: Path, certs: tuple[Cert, Cert]) -> None:
    assert ProgressReporter.from_env({}) is None  # outside Kubernetes
    reporter = ProgressReporter.from_env({"LORA_REPORT_URL": server.url, "LORA_REPORT_TOKEN": str(token),
                                          "LORA_REPORT_CA": str(certs[0].cert),
                                          "LORA_REPORT_MIN_INTERVAL_SECONDS": "0.5"})
    assert reporter is not None and reporter.min_interval == 0.5
    reporter.close(initial_status())
    [request] = server.received()
    assert request.headers["Authorization"] == "Bearer token-1" and reporter.writes == 1
