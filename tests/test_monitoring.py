"""What users watch: timestamps and step timings, lifecycle signals and Celery events, and
progress reported from inside a step."""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import pytest
from celery.result import AsyncResult
from celery.signals import task_failure

from ergate_celery import JobStatus, Progress, ProgressReporter, Workflow, signals
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

from .support import Setup, failure, in_process_worker, wait_until
from .workflows import echo_workflow, fail_or_abort

WAIT = 60


def _workflows(setup: Setup) -> None:
    workflow = echo_workflow("watched", "first")

    @workflow.step
    def second(x: str) -> str:
        return fail_or_abort(x).upper()

    setup.ergate.register_workflow(workflow)


def test_job_records_timestamps_and_step_timings(setup: Setup, worker: Any) -> None:
    _workflows(setup)
    with worker():
        job = setup.ergate.submit_job("watched", initial_input_value="ok")
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.submitted_at is not None
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.submitted_at <= done.started_at <= done.finished_at
    assert done.duration is not None
    assert done.duration >= 0
    assert [(t.step, t.index, t.outcome, t.attempt) for t in done.timings] == [
        ("first", 0, "QUEUED", 1),
        ("second", 1, "COMPLETED", 1),
    ]
    assert all(t.duration >= 0 for t in done.timings)
    assert done.model_dump(mode="json")["duration"] == done.duration


def test_failed_job_says_which_step_and_why(setup: Setup, worker: Any) -> None:
    _workflows(setup)
    with worker():
        job = setup.ergate.submit_job("watched", initial_input_value="fail")
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert failure(done) == ("ValueError", "card declined", "second")
    assert done.error.traceback is not None
    assert 'raise ValueError("card declined")' in done.error.traceback
    assert done.finished_at is not None
    assert done.timings[-1].outcome == "FAILED"


@pytest.mark.parametrize("kept", [1, 3])
def test_timings_keep_only_the_latest_step_runs(
    make_setup: Callable[..., Setup], kept: int
) -> None:
    # A long job must not carry all its past step runs in every message.
    setup = make_setup("redis", ergate_timings_kept=kept)
    workflow = Workflow(unique_name="long")
    for index in range(6):

        def step(x: int) -> int:
            return x + 1

        step.__name__ = step.__qualname__ = f"step_{index}"
        workflow.step(step)
    setup.ergate.register_workflow(workflow)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("long", initial_input_value=0)
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == 6
    assert done.steps_completed == 6
    expected = [f"step_{index}" for index in range(6)][-kept:]
    assert [timing.step for timing in done.timings] == expected
    assert done.timings[-1].outcome == "COMPLETED"


def test_lifecycle_signals_fire_and_a_raising_receiver_is_harmless(
    setup: Setup, worker: Any
) -> None:
    _workflows(setup)
    seen: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def receiver(name: str) -> Any:
        def receive(sender: str, job: Any, **kwargs: Any) -> None:
            with lock:
                seen.append((name, str(job.initial_input_value), job.status.name))

        return receive

    def broken(sender: str, job: Any, **kwargs: Any) -> None:
        raise RuntimeError("a buggy receiver")

    connected = {
        name: getattr(signals, name)
        for name in (
            "job_started",
            "step_started",
            "step_completed",
            "job_completed",
            "job_failed",
            "job_aborted",
            "job_cancelled",
        )
    }
    handlers = {name: receiver(name) for name in connected}
    for name, signal in connected.items():
        signal.connect(handlers[name], weak=False)
        signal.connect(broken, weak=False)
    try:
        with worker():
            ids = {
                value: setup.ergate.submit_job("watched", initial_input_value=value).id
                for value in ("ok", "fail", "abort")
            }
            for job_id in ids.values():
                setup.ergate.wait_for_job(job_id, timeout=WAIT)
    finally:
        for name, signal in connected.items():
            signal.disconnect(handlers[name])
            signal.disconnect(broken)
    for value in ("ok", "fail", "abort"):
        names = [name for name, v, _ in seen if v == value]
        assert names[:3] == ["job_started", "step_started", "step_completed"]
        assert names.count("step_started") == 2
    assert ("job_completed", "ok", "COMPLETED") in seen
    assert ("job_failed", "fail", "FAILED") in seen
    assert ("job_aborted", "abort", "ABORTED") in seen
    assert setup.ergate.get_job(ids["ok"]).status is JobStatus.COMPLETED


@contextmanager
def _captured_events(setup: Setup) -> Iterator[list[dict[str, Any]]]:
    """Every Celery event sent on the setup's broker while the block runs."""
    events: list[dict[str, Any]] = []
    with setup.app.connection() as connection:
        receiver = setup.app.events.Receiver(
            connection, handlers={"*": lambda event: events.append(event)}
        )
        capture = threading.Thread(
            target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False), daemon=True
        )
        capture.start()
        try:
            # The receiver's queue is bound once a probe sent now reaches it.
            with setup.app.events.default_dispatcher() as dispatcher:
                wait_until(lambda: _probed(dispatcher, events), what="the event receiver to listen")
            yield events
        finally:
            receiver.should_stop = True
            capture.join(10)


def test_lifecycle_is_sent_as_celery_events_when_events_are_on(setup: Setup) -> None:
    _workflows(setup)
    with _captured_events(setup) as events, in_process_worker(setup.app, task_events=True):
        job = setup.ergate.submit_job("watched", initial_input_value="ok")
        setup.ergate.wait_for_job(job.id, timeout=WAIT)
        # Events may arrive out of order (the embedded broker): wait for all six.
        wait_until(
            lambda: sum(e["type"].startswith("ergate-") for e in events) >= 6,
            what="the six lifecycle events",
        )
    # Order by the events' Lamport clock: the embedded broker keeps FIFO only to the ms.
    sent = sorted((e for e in events if e["type"].startswith("ergate-")), key=lambda e: e["clock"])
    ours = [(e["type"], e.get("step")) for e in sent]
    assert ours == [
        ("ergate-job-started", "first"),
        ("ergate-step-started", "first"),
        ("ergate-step-completed", "first"),
        ("ergate-step-started", "second"),
        ("ergate-step-completed", "second"),
        ("ergate-job-completed", "second"),
    ]
    completed = next(e for e in events if e["type"] == "ergate-job-completed")
    assert (completed["job_id"], completed["status"]) == (job.id, "COMPLETED")


def test_a_cancel_outside_a_worker_is_sent_as_an_event_when_events_are_on(
    make_setup: Callable[..., Setup], setup_name: str
) -> None:
    setup = make_setup(setup_name, worker_send_task_events=True)
    _workflows(setup)
    job = setup.ergate.submit_job("watched", initial_input_value="ok")  # no worker: QUEUED
    with _captured_events(setup) as events:
        setup.ergate.cancel_job(job.id)
        wait_until(
            lambda: any(e["type"] == "ergate-job-cancelled" for e in events), what="the event"
        )
    cancelled = next(e for e in events if e["type"] == "ergate-job-cancelled")
    assert (cancelled["job_id"], cancelled["status"]) == (job.id, "CANCELLED")


def _probed(dispatcher: Any, events: list[dict[str, Any]]) -> bool:
    dispatcher.send("test-probe")
    time.sleep(0.1)
    return any(e["type"] == "test-probe" for e in events)


def test_progress_moves_inside_a_step_and_only_forward(setup_name: str, make_setup: Any) -> None:
    setup = make_setup(setup_name, ergate_progress_interval=0.05)
    release, reported = threading.Event(), threading.Event()
    workflow = Workflow(unique_name="long")

    @workflow.step
    def prepare(x: int) -> int:
        return x

    @workflow.step
    def crunch(x: int, progress: Annotated[ProgressReporter, Progress()]) -> int:
        for i in range(1, 11):
            progress.report(i / 10)
            time.sleep(0.06)
            if i == 5:
                reported.set()
                assert release.wait(WAIT)
        return x

    @workflow.step
    def finish(x: int) -> int:
        return x

    setup.ergate.register_workflow(workflow)
    seen: list[float] = []
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("long", initial_input_value=1)
        assert reported.wait(WAIT)
        middle = setup.ergate.get_job(job.id).percent_completed
        release.set()
        while not (current := setup.ergate.get_job(job.id)).is_final:
            seen.append(current.percent_completed)
            time.sleep(0.01)
    # The second of three steps runs between 33.3% and 66.7%; halfway through it is at 50%.
    assert middle == pytest.approx(50.0)
    assert seen == sorted(seen)
    assert all(33.0 < p <= 67.0 for p in seen if p < 99.0)
    assert current.percent_completed == 100.0


def test_a_step_that_raised_is_a_failed_celery_task(setup: Setup, worker: Any) -> None:
    _workflows(setup)
    failures: list[tuple[str, str, str]] = []

    def on_failure(sender: Any = None, task_id: str = "", exception: Any = None, **kw: Any) -> None:
        failures.append((sender.name, task_id, type(exception).__name__))

    task_failure.connect(on_failure, weak=False)
    try:
        with worker():
            failed = setup.ergate.submit_job("watched", initial_input_value="fail")
            aborted = setup.ergate.submit_job("watched", initial_input_value="abort")
            done = setup.ergate.wait_for_job(failed.id, timeout=WAIT)
            assert setup.ergate.wait_for_job(aborted.id, timeout=WAIT).status is JobStatus.ABORTED
            step = AsyncResult(f"{STEP_TASK_ID_PREFIX}{failed.id}:1", app=setup.app)
            wait_until(lambda: step.state == "FAILURE", what="the failed step's FAILURE result")
    finally:
        task_failure.disconnect(on_failure)
    assert done.status is JobStatus.FAILED  # the job's outcome is unchanged
    assert isinstance(step.result, ValueError)
    assert str(step.result) == "card declined"
    assert 'raise ValueError("card declined")' in (step.traceback or "")
    assert failures == [
        ("ergate.watched.second", f"{STEP_TASK_ID_PREFIX}{failed.id}:1", "ValueError")
    ]
    assert AsyncResult(f"{STEP_TASK_ID_PREFIX}{aborted.id}:1", app=setup.app).state == "SUCCESS"
