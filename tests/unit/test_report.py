"""The shared report rendering: the operator's ``report.render`` and the trainer console's table."""

from lora_contract.api import (
    Artifacts,
    Condition,
    GradeScores,
    Improvements,
    LoraTrainingJobStatus,
    StepStatus,
    TrainerStatus,
)
from lora_contract.progress import initial_status
from lora_contract.rendering import report_table
from lora_operator.report import render


def _trainer() -> TrainerStatus:
    return TrainerStatus(
        progress=100, step_summary="9/9 improvements",
        steps=[StepStatus(name="datasets", state="Completed", message="54 train / 6 validation"),
               StepStatus(name="training", state="Failed")],
        before=GradeScores(weighted_overall=40.0, items=4), after=GradeScores(weighted_overall=50.0, items=4),
        improvements=Improvements(quality_percent=25.0, eval_loss_delta=-0.5), train_items=100,
        artifacts=Artifacts(adapter="/output/adapter"),
    )


def test_render_takes_trainer_fields_from_the_trainer_and_the_rest_from_the_top() -> None:
    status = LoraTrainingJobStatus(
        phase="Succeeded", message="done", trainer=_trainer(), xp=300,
        conditions=[Condition(type="Succeeded", status="True", reason="Completed", last_transition_time="t"),
                    Condition(type="Stalled", status="False", reason="Progressing", last_transition_time="t")])
    lines = render("demo", status).splitlines()
    assert lines[:2] == ["LoraTrainingJob demo: Succeeded (100%, 9/9 improvements)", "  done"]
    assert " ✓ datasets          54 train / 6 validation" in lines and " ✗ training" in lines
    assert "  weighted overall        40.0      50.0       +10" in lines
    assert "  graded items               4         4          " in lines  # no change column for counts
    assert "  improvements: quality +25.0%, held-out loss -0.5000" in lines
    assert "  XP: 300 for 100 training items" in lines and "  adapter: /output/adapter" in lines
    assert "  condition Succeeded: Completed" in lines and not any("Stalled" in line for line in lines)


def test_render_of_a_new_resource_and_a_table_without_scores_or_xp() -> None:
    assert render("new", LoraTrainingJobStatus()).splitlines()[0] == "LoraTrainingJob new: Pending (0%, )"
    assert report_table(initial_status(), None) == []
    assert report_table(TrainerStatus(before=GradeScores()), None) == []  # no score, no table header


def test_the_report_shows_speed_against_its_noise_and_answer_length_as_its_own_figure() -> None:
    trainer = TrainerStatus(
        before=GradeScores(tokens_per_second=292.0, mean_answer_tokens=48.0, bench_tokens_per_second=400.0),
        after=GradeScores(tokens_per_second=32.0, mean_answer_tokens=2.4, bench_tokens_per_second=396.0),
        improvements=Improvements(speed_percent=-1.0, speed_noise_percent=2.5, answer_length_percent=-95.0))
    lines = report_table(trainer, None)
    assert "  answer tokens / s      292.0      32.0      -260" in lines  # the graded answers': moves with length
    assert "  answer tokens           48.0       2.4     -45.6" in lines
    assert "  speed, tokens / s      400.0     396.0        -4" in lines  # the fixed workload's
    assert "  improvements: speed: no change (within ±2.5%), answer length -95.0%" in lines
    faster = trainer.improvements.model_copy(update={"speed_percent": 12.0, "answer_length_percent": None})
    assert report_table(trainer.model_copy(update={"improvements": faster}), None)[-1] == \
        "  improvements: speed: +12.0% faster"
