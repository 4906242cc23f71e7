"""The whole pipeline on the tiny model: events, console, artifacts, report, failures and the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lora_contract.api import PIPELINE_STEPS, LoraTrainingJobSpec, ModelSpec, TrainerStatus
from lora_contract.progress import (
    EvalEvent,
    FailureEvent,
    MetricsEvent,
    NoteEvent,
    ReportEvent,
    StepEvent,
    TrainerEvent,
    TrainEvent,
    dump_status,
    final_summary,
    parse_event,
)
from lora_trainer.cli import main
from lora_trainer.context import RunContext
from lora_trainer.events import ConsoleSink, Emitter, JsonlSink
from lora_trainer.layout import write_atomically
from lora_trainer.modeling import Placement, load_model
from lora_trainer.pipeline import EXECUTION_ORDER, STEP_RUNNERS, PipelineResult, run_pipeline
from lora_trainer.steps import model as model_step
from lora_trainer.steps import training_config, validation
from lora_trainer.steps.saving import staged
from tests.trainer.conftest import tiny_spec, tiny_spec_dict


class Recorder:
    def __init__(self) -> None:
        self.events: list[TrainerEvent] = []
        self.final: TrainerStatus | None = None

    def emit(self, event: TrainerEvent, status: TrainerStatus) -> None:
        self.events.append(event)

    def close(self, final_status: TrainerStatus) -> None:
        self.final = final_status

    def steps(self) -> list[tuple[int, str]]:
        return [(e.index, e.state) for e in self.events if isinstance(e, StepEvent)]

    def message(self, index: int) -> str:
        return next(e.message for e in reversed(self.events)
                    if isinstance(e, StepEvent) and e.index == index and e.message)


@dataclass(frozen=True)
class Run:
    output: Path
    result: PipelineResult
    recorder: Recorder
    console: str

    @property
    def status(self) -> TrainerStatus:
        return self.result.status


def run(spec: Any, output: Path) -> Run:
    recorder, console = Recorder(), io.StringIO()
    sinks = [recorder, JsonlSink(output / "events.jsonl"), ConsoleSink(console, live=False)]
    result = run_pipeline(spec, output, sinks)
    return Run(output, result, recorder, console.getvalue())


@pytest.fixture(scope="module")
def finished(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    output = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORA_TERMINATION_MESSAGE_PATH", str(output / "termination-log"))
        return run(tiny_spec(tiny_model), output)


def test_steps_run_in_the_documented_order_and_all_complete(finished: Run) -> None:
    assert finished.recorder.steps() == [(i, s) for i in EXECUTION_ORDER for s in ("Active", "Completed")]
    status = finished.status
    assert [s.state for s in status.steps] == ["Completed"] * len(PIPELINE_STEPS)
    assert status.progress == 100 and finished.result.exit_code == 0 and finished.recorder.final == status


def test_training_metrics_and_report_events(finished: Run) -> None:
    events = finished.recorder.events
    train = [e for e in events if isinstance(e, TrainEvent)]
    assert [e.step for e in train] == [1, 2, 3, 4] and all(e.total_steps == 4 for e in train)
    assert train[-1].eta_seconds == 0 and all(e.learning_rate is not None for e in train)
    assert [e.step for e in events if isinstance(e, EvalEvent)] == [2, 4]
    before, after = (next(e for e in events if isinstance(e, MetricsEvent) and e.which == w)
                     for w in ("before", "after"))
    assert before.scores.items == after.scores.items == 4  # 3 held-out items + 1 query
    assert before.scores.eval_loss is not None and after.scores.eval_loss is not None
    report = next(e for e in events if isinstance(e, ReportEvent))
    # by hand from docs/grading.md: 54 items -> 25 + 225 x 44 / 90 = 135 base XP, x clamp(1 + points / 50)
    points = after.scores.weighted_overall - before.scores.weighted_overall
    xp = finished.result.xp
    assert xp == round(135 * min(1.5, max(0.5, 1 + points / 50)))
    assert finished.recorder.message(9).startswith(f"the operator awards {xp} XP for 54 distinct training items")
    saved = {w: json.loads((finished.output / "evaluation" / f"{w}.json").read_text())["scores"]
             for w in ("before", "after")}
    delta = saved["after"]["evalLoss"] - saved["before"]["evalLoss"]
    assert report.improvements.eval_loss_delta == pytest.approx(delta)
    status = finished.status
    assert status.train_items == report.train_items == 54
    assert status.training_step == status.training_total_steps == 4 and len(status.loss_history) == 4


def test_after_metrics_grade_the_same_items_as_before(finished: Run) -> None:
    before, after = (json.loads((finished.output / "evaluation" / f"{w}.json").read_text())
                     for w in ("before", "after"))
    assert [a["item"] for a in before["answers"]] == [a["item"] for a in after["answers"]]
    assert [a["item"] for a in before["answers"]][-1] == "query 1"
    testing = json.loads((finished.output / "evaluation" / "testing.json").read_text())
    long = testing["edgeCases"]["longPrompt"]
    assert long["promptTokens"] > long["keptTokens"] == 96 - 8  # context minus maxNewTokens


def test_artifacts_manifest_and_report(finished: Run) -> None:
    out = finished.output
    artifacts = finished.status.artifacts
    assert artifacts is not None
    assert artifacts.model_dump(exclude={"checkpoints_removed_bytes"}) == {
        "adapter": str(out / "adapter"), "merged": str(out / "merged"), "report": str(out / "report.json"),
        "manifest": str(out / "manifest.json"), "adapter_uri": None, "destinations": [], "lora_rank": 8}
    # no output volume or destination here (no LORA_OUTPUT_URI): nothing to load the adapter from after the pod
    assert not (out / "checkpoints").exists() and artifacts.checkpoints_removed_bytes > 0  # removed after success
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
    assert json.loads((out / "merged" / "config.json").read_text())["use_cache"] is True
    assert (out / "merged" / "tokenizer.json").is_file() and (out / "adapter" / "chat_template.jinja").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["baseModel"] and len(manifest["fingerprint"]) == 16
    for entry in manifest["files"]:
        data = (out / entry["path"]).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert json.loads((out / "report.json").read_text()) == {
        "trainer": dump_status(finished.status), "xp": finished.result.xp, "exitCode": 0}
    assert (out / "termination-log").read_text() == final_summary(finished.status)
    stats = json.loads((out / "dataset-stats.json").read_text())
    assert stats["train"] == 54 and stats["validation"] == 6


def test_artifacts_get_their_names_only_when_complete(tmp_path: Path) -> None:
    """A pod killed mid-save leaves adapter.partial/ and no manifest; the retry replaces both attempts."""
    folder = tmp_path / "adapter"
    with pytest.raises(RuntimeError), staged(folder) as partial:  # the killed attempt
        (partial / "adapter_model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")
    assert not folder.exists() and (tmp_path / "adapter.partial" / "adapter_model.safetensors").is_file()
    folder.mkdir()  # and an adapter of an earlier attempt that got that far
    (folder / "stale.bin").write_bytes(b"old")
    with staged(folder) as partial:
        (partial / "adapter_model.safetensors").write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    assert [p.name for p in folder.iterdir()] == ["adapter_model.safetensors"]
    write_atomically(tmp_path / "manifest.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "manifest.json"]


def test_events_file_is_the_same_stream(finished: Run) -> None:
    lines = (finished.output / "events.jsonl").read_text().splitlines()
    assert [parse_event(line) for line in lines] == finished.recorder.events


def test_console_shows_checklist_progress_and_report(finished: Run) -> None:
    text = finished.console
    assert " ▶ 1 datasets" in text and " ✓ 1 datasets" in text
    assert "training [" in text and "4/4" in text and "eval loss" in text
    checklist = text.split("steps:\n", 1)[1]
    assert [line.split()[:3] for line in checklist.splitlines()[:10]] == \
        [["✓", str(i), name] for i, name in enumerate(PIPELINE_STEPS)]
    report = text.split("report:\n", 1)[1]
    for row in ("weighted overall", "held-out loss", "perplexity", "seconds / answer", "answer tokens",
                "speed, tokens / s", "improvements:", "XP:", "adapter:"):
        assert row in report
    assert re.search(r"speed: (no change \(within ±[\d.]+%\)|[+-][\d.]+% (faster|slower))", report)
    assert f"XP: {finished.result.xp} for 54 training items" in report and "as the operator awards it" in report


def test_live_console_redraws_in_place() -> None:
    stream = io.StringIO()
    emitter = Emitter([ConsoleSink(stream, live=True)])
    emitter.emit(StepEvent(index=4, state="Active"))
    emitter.emit(TrainEvent(step=3, total_steps=12, loss=1.5, learning_rate=1e-4, eta_seconds=75,
                         tokens_per_second=812.4))
    text = stream.getvalue()
    assert text.count("\x1b[10F\x1b[J") == 1  # the first 10-line block is redrawn with the bar below it
    assert "training [██████░░░░░░░░░░░░░░░░░░] 3/12  loss 1.5000  lr 1.0e-04  812 tok/s  ETA 1m15s" in text
    assert " ▶ 4 training" in text and " · 5 saving" in text


def test_a_rerun_reuses_before_metrics_and_resumes_the_last_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    spec = tiny_spec(tiny_model, output={"keepCheckpoints": True})
    kept = run(spec, tmp_path / "first")
    assert (kept.output / "checkpoints" / "checkpoint-4").is_dir() and kept.status.artifacts.checkpoints_removed_bytes \
        is None and "checkpoints removed" not in kept.recorder.message(9)
    output = tmp_path / "again"
    shutil.copytree(kept.output, output)
    again = run(spec, output)
    assert again.result.exit_code == 0
    assert "reused from a previous attempt" in again.recorder.message(0)
    assert "resumed from checkpoint-4" in again.recorder.message(4)
    # the copied state's best checkpoint is looked up in the new folder, not in the one copied from
    state = json.loads((output / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert Path(state["best_model_checkpoint"]).parent == output / "checkpoints"


def test_the_trained_model_is_freed_before_the_artifact_is_reloaded(tiny_model: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list[weakref.ref[Any]] = []
    reloaded: list[tuple[ModelSpec, Any]] = []

    def wrap_model(ctx: RunContext) -> str:
        done = model_step.run(ctx)
        trained.append(weakref.ref(ctx.base_model.model))
        return done

    def spy_load(spec: ModelSpec, dtype: Any, placement: Placement = "device") -> Any:
        reloaded.append((spec, trained[0]()))
        return load_model(spec, dtype, placement)

    monkeypatch.setitem(STEP_RUNNERS, 2, wrap_model)
    monkeypatch.setattr(validation, "load_model", spy_load)
    spec = tiny_spec_dict(tiny_model)
    spec["model"]["trustRemoteCode"] = True
    done = run(LoraTrainingJobSpec.model_validate(spec), tmp_path)
    assert done.result.exit_code == 0
    [(merged, alive)] = reloaded
    assert alive is None  # step 6 holds one model, not two
    assert merged.path == str(tmp_path / "merged") and merged.trust_remote_code  # the spec's choice is kept


def test_an_empty_dataset_fails_step_1(tiny_model: Path, tmp_path: Path) -> None:
    failed = run(tiny_spec(tiny_model, datasets=[{"inline": [{"text": "tiny"}], "name": "scraps"}]), tmp_path)
    assert failed.result.exit_code == 2
    assert [s.state for s in failed.status.steps] == ["Pending", "Failed"] + ["Pending"] * 8
    assert failed.status.steps[1].message == (
        "no usable training items: 1 rows from 1 source(s) -> 0 train / 0 validation; dropped 1 too short")


def test_a_failing_step_is_reported(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORA_TERMINATION_MESSAGE_PATH", str(tmp_path / "termination-log"))
    failed = run(tiny_spec(tiny_model, lora={"targetModules": ["q_proj", "qkv"]}), tmp_path / "out")
    status = failed.status
    assert failed.result.exit_code == 2  # invalid input: a retry cannot help
    assert [s.state for s in status.steps] == ["Completed", "Completed", "Failed"] + ["Pending"] * 7
    assert "['qkv'] match no linear module" in (status.steps[2].message or "")
    failure = [e for e in failed.recorder.events if isinstance(e, FailureEvent)]
    assert len(failure) == 1 and failure[0].message.startswith("step 2 model failed: lora.targetModules ['qkv']")
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert summary["message"] == failure[0].message and summary["steps"][2] == {"name": "model", "state": "Failed"}
    assert "FAILED in model" in failed.console
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert failed.result.xp is None and report["xp"] is None and report["exitCode"] == 2  # no XP for a failed run


def test_a_retryable_failure_exits_1(tiny_model: Path, tmp_path: Path) -> None:
    failed = run(tiny_spec(tiny_model, datasets=[{"url": "http://127.0.0.1:9/data.jsonl"}]), tmp_path)
    assert failed.result.exit_code == 1  # the server may come back: the Job's retry may succeed
    step = failed.status.steps[1]
    assert step.state == "Failed" and "cannot download http://127.0.0.1:9/data.jsonl" in (step.message or "")


def test_cli_rejects_a_bad_spec_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"hubId": "a/b", "path": "/m"}, "datasets": [{"inline": []}],
                                   "lora": {"rank": 0}}))
    assert main(["run", str(bad), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "invalid spec" in err and "set exactly one of hubId, path or package" in err and "spec.lora.rank" in err
    assert not (tmp_path / "out").exists()
    (tmp_path / "not-yaml.yaml").write_text("model: [")
    assert main(["validate", str(tmp_path / "not-yaml.yaml")]) == 2
    assert "cannot read YAML" in capsys.readouterr().err


def test_cli_validate_reads_a_manifest_and_prints_statistics(tiny_model: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    manifest = {"apiVersion": "lora.airepublic.io/v1alpha1", "kind": "LoraTrainingJob",
                "metadata": {"name": "demo"}, "spec": tiny_spec_dict(tiny_model)}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "ConfigMap"}, manifest]))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "spec: valid" in out and "172 rows from 1 source(s) -> 54 train / 6 validation" in out
    assert json.loads(out.split("\n", 2)[2])["sources"]["minion-handbook"]["rows"] == 172
    empty = tiny_spec_dict(tiny_model, datasets=[{"inline": [{"text": "x"}]}])
    path.write_text(yaml.safe_dump(empty))
    assert main(["validate", str(path)]) == 2
    assert "no usable training items" in capsys.readouterr().err


def test_cli_run_writes_events_and_exit_code(tiny_model: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict(tiny_model, lora={"maxSteps": 1}, evaluation={"queries": []})))
    assert main(["run", str(spec), "--output", str(tmp_path / "out"), "--events", "-", "--quiet"]) == 0
    captured = capsys.readouterr()
    events = [parse_event(line) for line in captured.out.splitlines()]
    assert isinstance(events[-1], StepEvent) and events[-1].index == 9 and events[-1].state == "Completed"
    assert captured.err == ""  # --quiet: no checklist


def test_the_disk_check_measures_what_the_run_writes(finished: Run) -> None:
    """The estimate step 3 reports holds what steps 4-5 then wrote, merged model to within 10 %."""
    message = next(e.message for e in finished.recorder.events
                   if isinstance(e, StepEvent) and e.index == 3 and e.state == "Completed")
    estimate = re.search(r"merged model ([\d.]+) MB", message)
    assert estimate and "disk: about" in message, message
    merged = (finished.output / "merged" / "model.safetensors").stat().st_size / 1e6
    assert float(estimate.group(1)) == pytest.approx(merged, rel=0.1)


def test_a_full_output_volume_fails_before_training(tiny_model: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A nearly full volume cannot be made here on demand: only the free-space reading is replaced.
    monkeypatch.setattr(training_config.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    failed = run(tiny_spec(tiny_model), tmp_path)
    assert failed.result.exit_code == 2  # the same volume stays too small: no retry
    step = failed.status.steps[3]
    assert step.state == "Failed" and failed.status.steps[4].state == "Pending"
    assert step.message and step.message.startswith(
        f"the output volume has 0.001 MB free at {tmp_path} but this run writes about")
    assert "lower lora.saveTotalLimit, or set output.merge: false" in step.message
    assert not (tmp_path / "checkpoints").exists()


def test_grading_steps_report_each_batch_of_answers(finished: Run) -> None:
    """Progress inside the long generation steps, so a slow but healthy run is not taken for Stalled (the
    4 items are one batch here; ``test_generation`` checks one note per batch)."""
    notes = [(e.index, e.message) for e in finished.recorder.events if isinstance(e, NoteEvent)]
    bench = "measuring speed: 4 prompts x 16 tokens, a warm-up and 3 timed runs"  # the fixed workload after them
    assert notes == [(0, "4/4 answers generated"), (0, bench), (8, "4/4 answers generated"), (8, bench)]
    assert "   4/4 answers generated" in finished.console
