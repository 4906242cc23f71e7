"""The progress endpoint's decisions, without a cluster: a stand-in TokenReview, a real aiohttp server.

The real TokenReview, tokens and TLS are tested against the control plane in
tests/integration/test_status_transport.py.
"""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer

from lora_contract import progress
from lora_operator.progress_server import Identity, ProgressEndpoint, Reviewer, RunDirectory, identity_from_review
from lora_operator.status_writer import StatusWriter


def _review(username: str, audiences=("lora-operator",), pod: str | None = "p-1", authenticated=True) -> dict:
    extra = {"authentication.kubernetes.io/pod-name": [pod], "authentication.kubernetes.io/pod-uid": ["uid-p"]} \
        if pod else {}
    return {"status": {"authenticated": authenticated, "audiences": list(audiences),
                       "user": {"username": username, "extra": extra}}}


def test_only_pod_bound_service_account_tokens_for_our_audience_are_identities() -> None:
    sa = "system:serviceaccount:ns:demo-trainer"
    assert identity_from_review(_review(sa), "lora-operator") == Identity("ns", "demo-trainer", "p-1", "uid-p")
    assert identity_from_review(_review(sa, audiences=("api",)), "lora-operator") is None
    assert identity_from_review(_review(sa, pod=None), "lora-operator") is None
    assert identity_from_review(_review(sa, authenticated=False), "lora-operator") is None
    assert identity_from_review(_review("alice"), "lora-operator") is None


def test_reviews_are_reused_for_a_while() -> None:
    calls: list[str] = []
    now = [0.0]

    def review(token: str) -> dict:
        calls.append(token)
        return _review("system:serviceaccount:ns:demo-trainer")

    reviewer = Reviewer(review, ttl=30, clock=lambda: now[0])
    assert reviewer.identity("t") == reviewer.identity("t")
    assert calls == ["t"]
    now[0] = 31
    reviewer.identity("t")
    assert calls == ["t", "t"]


def _exchange(directory: RunDirectory, writer: StatusWriter, requests: list[tuple[str, dict]]) -> list[int]:
    reviewer = Reviewer(lambda _: _review("system:serviceaccount:ns:demo-trainer"))
    endpoint = ProgressEndpoint(reviewer, directory, writer, read_pod_run=lambda ns, pod: "demo")

    async def go() -> list[int]:
        async with TestClient(TestServer(endpoint.app())) as client:
            codes = []
            for run, body in requests:
                resp = await client.post(f"/v1/namespaces/ns/loratrainingjobs/{run}/report", json=body,
                                         headers={"Authorization": "Bearer t"})
                codes.append(resp.status)
            return codes

    return asyncio.run(go())


def _body(sequence: int, step: int) -> dict:
    trainer = progress.reduce(progress.initial_status(), progress.TrainEvent(step=step, totalSteps=9, loss=1.0))
    return {"sequence": sequence, "trainer": progress.dump_status(trainer)}


def test_reports_reach_the_writer_newest_first_and_never_for_a_finished_run() -> None:
    directory, writer = RunDirectory(), StatusWriter(lambda *a: None, rate=10, run_interval=60)
    codes = _exchange(directory, writer, [("demo", _body(1, 1))])
    assert codes == [404]  # the operator has not seen the run yet
    directory.set_run("ns", "demo", "uid-r", "Running")
    assert _exchange(directory, writer, [("demo", _body(1, 1)), ("demo", _body(3, 3)), ("demo", _body(2, 2))]) == \
        [202, 202, 200]
    with writer.exclusive(("ns", "demo", "uid-r")) as held:
        assert held.report and held.report["trainingStep"] == 3
    directory.set_run("ns", "demo", "uid-r", "Succeeded")
    assert _exchange(directory, writer, [("demo", _body(4, 4))]) == [409]
