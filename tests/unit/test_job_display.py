"""The job page's timeline, computed from a `Job` alone (no Django, no store)."""

from datetime import UTC, datetime, timedelta

from ergate_celery import Job, JobStatus
from ergate_celery.contrib.django.job_display import MIN_BAR_PERCENT, display
from ergate_celery.model.job import StepTiming

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def _timing(step: str, index: int, start: float, end: float, outcome: str) -> StepTiming:
    return StepTiming(
        step=step,
        index=index,
        started_at=T0 + timedelta(seconds=start),
        finished_at=T0 + timedelta(seconds=end),
        attempt=1,
        outcome=outcome,
    )


def test_runs_after_a_retry_are_numbered_and_placed_on_one_scale() -> None:
    job = Job(
        workflow_name="w",
        status=JobStatus.COMPLETED,
        retries=1,
        timings=[
            _timing("a", 0, 0, 1, "QUEUED"),
            _timing("b", 1, 1, 2, "FAILED"),
            _timing("b", 1, 8, 9.99, "QUEUED"),
            _timing("c", 2, 9.99, 10, "COMPLETED"),
        ],
    )
    bars = display(job).timeline
    assert [(bar.step, bar.run, bar.css_class) for bar in bars] == [
        ("a", 0, "ok"),
        ("b", 0, "failed"),
        ("b", 1, "ok"),
        ("c", 1, "ok"),
    ]
    assert [(bar.offset, bar.width) for bar in bars[:3]] == [(0, 10), (10, 10), (80, 19.9)]
    assert bars[3].width == MIN_BAR_PERCENT  # a 10 ms run stays visible
    assert bars[3].duration_text == "10 ms"


def test_the_running_step_is_an_open_bar_and_a_fresh_job_has_none() -> None:
    running = Job(
        workflow_name="w",
        status=JobStatus.RUNNING,
        current_step=1,
        current_step_name="b",
        step_started_at=T0 + timedelta(seconds=1),
        timings=[_timing("a", 0, 0, 1, "QUEUED")],
    )
    shown = display(running, now=T0 + timedelta(seconds=4))
    assert [(bar.step, bar.outcome, bar.offset, bar.width) for bar in shown.timeline] == [
        ("a", "QUEUED", 0, 25),
        ("b", "RUNNING", 25, 75),
    ]
    assert shown.cancellable
    assert not shown.retryable
    assert shown.current_step == "#1 b"
    assert display(Job(workflow_name="w")).timeline == []
