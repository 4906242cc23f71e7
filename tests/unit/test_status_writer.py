"""The status writer: one token bucket for all writes, newest report per run, finished runs closed."""

from __future__ import annotations

import threading

import pytest

from lora_operator.status_writer import StatusWriter, TokenBucket
from tests.conftest import wait_for

KEY = ("ns", "run", "uid-1")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[str, str, dict]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, namespace: str, name: str, patch: dict) -> None:
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise RuntimeError("apiserver busy")
            self.calls.append((namespace, name, patch))


def test_the_bucket_saves_at_most_one_second_of_budget() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=5, clock=clock)
    assert [bucket.try_take() for _ in range(5)] == [0.0] * 5
    assert bucket.try_take() == pytest.approx(0.2)
    clock.now += 60  # a long quiet spell buys no burst bigger than one second's worth
    assert sum(bucket.try_take() == 0.0 for _ in range(20)) == 5


def test_reports_of_one_run_are_coalesced_into_the_newest() -> None:
    patch = Recorder()
    writer = StatusWriter(patch, rate=100, run_interval=0.2)
    for step in range(50):
        writer.report(KEY, {"trainingStep": step})
    writer.start()
    wait_for("the report to be written", lambda: patch.calls)
    writer.stop()
    assert patch.calls == [("ns", "run", {"trainer": {"trainingStep": 49}})]


def test_the_operators_write_takes_the_pending_report_and_a_final_write_closes_the_run() -> None:
    patch = Recorder()
    writer = StatusWriter(patch, rate=100, run_interval=60)
    writer.report(KEY, {"trainingStep": 7})
    with writer.exclusive(KEY) as held:
        assert held.report == {"trainingStep": 7}
        writer.write(KEY, {"phase": "Succeeded", "trainer": held.report}, final=True)
    assert patch.calls == [("ns", "run", {"phase": "Succeeded", "trainer": {"trainingStep": 7}})]
    assert writer.report(KEY, {"trainingStep": 8}) is False  # a finished run takes no more reports
    with writer.exclusive(KEY) as held:
        assert held.report is None
    writer.forget(KEY)  # deleted: a new run of the same name and uid would start clean
    assert writer.report(KEY, {"trainingStep": 1}) is True


def test_a_refused_final_write_leaves_the_run_open_with_its_report() -> None:
    """The apiserver answered the final write 409 or 429: the status is not final yet, so the run must still
    take reports, and the one held goes back for the next sync, which writes the final status again."""
    patch = Recorder(fail=1)
    writer = StatusWriter(patch, rate=100, run_interval=60)
    writer.report(KEY, {"trainingStep": 7})
    with pytest.raises(RuntimeError), writer.exclusive(KEY) as held:
        writer.write(KEY, {"phase": "Succeeded", "trainer": held.report}, final=True)
    with writer.exclusive(KEY) as held:
        assert held.report == {"trainingStep": 7}
        writer.write(KEY, {"phase": "Succeeded", "trainer": held.report}, final=True)
    assert patch.calls == [("ns", "run", {"phase": "Succeeded", "trainer": {"trainingStep": 7}})]
    assert writer.report(KEY, {"trainingStep": 8}) is False


def test_a_failed_operator_write_puts_the_report_back() -> None:
    writer = StatusWriter(Recorder(fail=1), rate=100, run_interval=60)
    writer.report(KEY, {"trainingStep": 3})
    with pytest.raises(RuntimeError), writer.exclusive(KEY) as held:
        writer.write(KEY, {"trainer": held.report})
    with writer.exclusive(KEY) as held:
        assert held.report == {"trainingStep": 3}
        held.put_back()  # the operator had nothing of its own to write: the report waits for its turn
    with writer.exclusive(KEY) as held:
        assert held.report == {"trainingStep": 3}


def test_a_failed_report_write_is_retried_and_the_loop_survives() -> None:
    patch = Recorder(fail=1)
    writer = StatusWriter(patch, rate=100, run_interval=0.0)
    writer.start()
    writer.report(KEY, {"trainingStep": 1})
    wait_for("the retry", lambda: patch.calls, timeout=30)
    writer.report(("ns", "other", "uid-2"), {"trainingStep": 2})
    wait_for("the next run's report", lambda: len(patch.calls) == 2, timeout=30)
    writer.stop()
    assert patch.calls == [("ns", "run", {"trainer": {"trainingStep": 1}}),
                           ("ns", "other", {"trainer": {"trainingStep": 2}})]
