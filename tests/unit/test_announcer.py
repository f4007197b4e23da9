"""The announcer: which lifecycle signals a stored change sends follows from the pair (job
before, job after) alone; each goes out once, with a Celery event when events are on; a
receiver or an event that fails is logged and passed over; the log line says what changed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from celery import Celery
from celery.utils.dispatch import Signal

from ergate_celery import Job, JobStatus, signals
from ergate_celery.model.job import JobError, Wait
from ergate_celery.worker.announcer import EVENT_TYPES, Announcer, signals_for

S = JobStatus
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _job(status: JobStatus, **fields: Any) -> Job:
    return Job(id="j-1", workflow_name="orders", status=status, current_step_name="a", **fields)


RUNNING = _job(S.RUNNING, claim="t1", started_at=NOW)
WAIT = Wait(step="a", since=NOW, signal="approved")

CHANGES: list[tuple[str, Job | None, Job, list[Signal]]] = [
    ("a first claim", _job(S.QUEUED), RUNNING, [signals.job_started, signals.step_started]),
    (
        "a claim of a later step",
        _job(S.QUEUED, started_at=NOW),
        RUNNING,
        [signals.step_started],
    ),
    ("a step's outcome", RUNNING, _job(S.QUEUED, finished_by="t1"), [signals.step_completed]),
    (
        "the last step's outcome",
        RUNNING,
        _job(S.COMPLETED, finished_by="t1"),
        [signals.step_completed, signals.job_completed],
    ),
    (
        "a step that raised",
        RUNNING,
        _job(S.FAILED, finished_by="t1"),
        [signals.step_completed, signals.job_failed],
    ),
    ("a cancel of a queued job", _job(S.QUEUED), _job(S.CANCELLED), [signals.job_cancelled]),
    (
        "a wait",
        RUNNING,
        _job(S.SCHEDULED, finished_by="t1", wait=WAIT),
        [signals.step_completed, signals.job_waiting],
    ),
    (
        "a signal that releases a wait",
        _job(S.SCHEDULED, wait=WAIT),
        _job(S.QUEUED, signals={"approved": True}),
        [signals.job_signalled],
    ),
    ("a final job written again", _job(S.CANCELLED), _job(S.CANCELLED), []),
    ("progress inside a step", RUNNING, RUNNING.model_copy(update={"percent_completed": 5}), []),
]


@pytest.mark.parametrize(
    ("before", "after", "sent"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES]
)
def test_the_signals_follow_from_the_change(
    before: Job | None, after: Job, sent: list[Signal]
) -> None:
    assert signals_for(before, after) == sent


class _Task:
    """A running task's event dispatcher, as the announcer uses it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def send_event(self, event_type: str, **fields: Any) -> None:
        self.events.append((event_type, fields))


@pytest.fixture
def heard() -> Any:
    """What the receivers of every lifecycle signal heard, as (signal's event type, sender)."""
    received: list[tuple[str, str]] = []
    receivers = {}
    for signal, event_type in EVENT_TYPES.items():

        def receive(sender: str, job: Job, event_type: str = event_type, **kw: Any) -> None:
            received.append((event_type, sender))

        receivers[signal] = receive
        signal.connect(receive, weak=False)
    yield received
    for signal, receive in receivers.items():
        signal.disconnect(receive)


def test_each_signal_goes_out_once_with_its_event_when_events_are_on(
    memory_app: Celery, heard: list[tuple[str, str]]
) -> None:
    task = _Task()
    Announcer(memory_app, events_enabled=True)(
        RUNNING, _job(S.COMPLETED, finished_by="t1"), "ergate.orders.a", task
    )
    expected = [
        ("ergate-step-completed", "ergate.orders.a"),
        ("ergate-job-completed", "ergate.orders.a"),
    ]
    assert heard == expected
    assert [event_type for event_type, _ in task.events] == [e for e, _ in expected]
    assert task.events[0][1] == {
        "job_id": "j-1",
        "workflow": "orders",
        "step": "a",
        "status": "COMPLETED",
        "percent_completed": 0.0,
    }
    Announcer(memory_app, events_enabled=False)(_job(S.QUEUED), _job(S.CANCELLED), "x", task)
    assert len(task.events) == 2  # events off: signals only


def test_a_failing_receiver_is_logged_and_the_other_signals_still_go_out(
    memory_app: Celery, heard: list[tuple[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.step_completed.connect(broken, weak=False)
    try:
        Announcer(memory_app, events_enabled=False)(
            RUNNING, _job(S.COMPLETED, finished_by="t1"), "ergate.orders.a"
        )
    finally:
        signals.step_completed.disconnect(broken)
    assert [event_type for event_type, _ in heard] == [
        "ergate-step-completed",
        "ergate-job-completed",
    ]
    assert "receiver bug" in caplog.text


def test_the_log_line_says_what_changed_at_the_level_an_operator_needs(
    memory_app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    announce = Announcer(memory_app, events_enabled=False)
    error = JobError(type="ValueError", message="card declined", step="a")
    with caplog.at_level(logging.DEBUG, logger="ergate_celery"):
        announce(_job(S.QUEUED), RUNNING, "ergate.orders.a")
        announce(RUNNING, _job(S.FAILED, finished_by="t1", error=error), "ergate.orders.a")
        announce(_job(S.QUEUED), _job(S.CANCELLED), "ergate.cancel_job")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "Job j-1 QUEUED -> RUNNING at step a (ergate.orders.a)"),
        (
            "ERROR",
            "Job j-1 RUNNING -> FAILED at step a (ergate.orders.a): ValueError: card declined",
        ),
        ("INFO", "Job j-1 QUEUED -> CANCELLED at step a (ergate.cancel_job)"),
    ]
