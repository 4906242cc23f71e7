"""Trainer events -> status fields (the reducer both the trainer and the operator rely on)."""

import json
from itertools import pairwise

import pytest

from lora_contract import progress
from lora_contract.api import TrainerStatus


def _run_training(status: TrainerStatus, total: int = 100, every: int = 1) -> TrainerStatus:
    for step in range(every, total + 1, every):
        status = progress.reduce(status, progress.TrainEvent(step=step, totalSteps=total, loss=3.0 - step / 100,
                                                             learningRate=1e-4, epoch=step / total, etaSeconds=9))
    return status


def test_progress_is_monotonic_and_reaches_100() -> None:
    status = progress.initial_status()
    seen = [status.progress]
    for index in range(10):
        status = progress.reduce(status, progress.StepEvent(index=index, state="Active"))
        seen.append(status.progress)
        if index == 4:
            status = _run_training(status, total=20)
            seen.append(status.progress)
        status = progress.reduce(status, progress.StepEvent(index=index, state="Completed"))
        seen.append(status.progress)
    assert seen == sorted(seen)
    assert seen[-1] == 100
    assert status.step_summary == "9/9 improvements"


def test_training_progress_counts_inside_the_training_step() -> None:
    status = progress.initial_status()
    for index in range(4):
        status = progress.reduce(status, progress.StepEvent(index=index, state="Completed"))
    status = progress.reduce(status, progress.StepEvent(index=4, state="Active"))
    before = status.progress
    status = progress.reduce(status, progress.TrainEvent(step=50, totalSteps=100, loss=1.5))
    assert status.progress == before + 30  # half of training's 60 %
    assert status.step_summary == "4/9 training"
    assert status.loss == 1.5 and status.training_step == 50


@pytest.mark.parametrize(("total", "every"), [(49, 1), (50, 1), (51, 1), (137, 1), (1000, 1), (10_000, 1),
                                             (10_000, 10), (3_000, 7)])
def test_loss_history_is_bounded_evenly_spaced_and_keeps_the_ends(total: int, every: int) -> None:
    status = _run_training(progress.initial_status(), total=total, every=every)
    steps = [p.step for p in status.loss_history]
    assert steps[0] == every and steps[-1] == total - total % every
    limit = progress.LOSS_HISTORY_POINTS
    assert len(steps) == total // every if total // every <= limit else limit // 2 <= len(steps) <= limit
    stride = 1 if total <= limit else -(-total // (limit - 2))
    inner = [b - a for a, b in pairwise(steps[1:-1])]  # between the first and the newest
    assert all(abs(gap - max(stride, every)) < every for gap in inner), steps  # the whole run, evenly
    assert 0 < steps[-1] - steps[-2] < max(stride, every) + every


def test_events_round_trip_and_bad_events_are_rejected() -> None:
    event = progress.TrainEvent(step=3, totalSteps=10, loss=0.5, tokensPerSecond=120.0)
    assert progress.parse_event(progress.dump_event(event)) == event
    with pytest.raises(ValueError):
        progress.parse_event('{"type": "train", "step": 1}')
    with pytest.raises(ValueError):
        progress.parse_event('{"type": "step", "index": 12, "state": "Active"}')


def test_final_summary_fits_the_termination_message() -> None:
    status = _run_training(progress.initial_status(), total=1000)
    status.message = "x" * 5000
    text = progress.final_summary(status)
    assert len(text.encode()) <= progress.TERMINATION_MESSAGE_LIMIT
    summary = json.loads(text)
    assert summary["loss"] == status.loss  # the important fields survive the cut


def test_a_note_updates_the_running_step_and_counts_as_progress() -> None:
    status = progress.reduce(progress.initial_status(), progress.StepEvent(index=0, state="Active",
                                                                          time="2026-01-01T00:00:00Z"))
    status = progress.reduce(status, progress.NoteEvent(index=0, message="graded 3/11 answers",
                                                        time="2026-01-01T00:05:00Z"))
    step = status.steps[0]
    assert (step.state, step.start_time, step.message) == ("Active", "2026-01-01T00:00:00Z",
                                                                   "graded 3/11 answers")
    assert status.last_progress_time == "2026-01-01T00:05:00Z"
    assert progress.parse_event(progress.dump_event(progress.NoteEvent(index=0, message="x"))).message == "x"


def test_training_that_starts_again_replaces_the_loss_points_it_repeats() -> None:
    status = _run_training(progress.initial_status(), total=10)
    status = progress.reduce(status, progress.TrainEvent(step=7, totalSteps=10, loss=0.1))  # resumed at 6
    assert [p.step for p in status.loss_history] == [1, 2, 3, 4, 5, 6, 7]
    assert status.loss_history[-1].loss == 0.1
