"""`WorkflowTester` runs workflows as a worker and beat would, on its virtual clock: steps in
order, waits that end when the clock reaches them, signals, Celery retries whose countdown
passes on the clock, errors and final states; each tester apart from the others."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import pytest

import ergate_celery.testing.tester as tester_module
from ergate_celery import (
    AbortJob,
    CurrentRun,
    JobStatus,
    SignalPayload,
    Sleep,
    StepRun,
    WaitForSignal,
    Workflow,
    signals,
)
from ergate_celery.testing import WorkflowTester

from ..django_support import configure_django

START = datetime(2030, 1, 1, tzinfo=UTC)


def _linear() -> Workflow:
    workflow = Workflow(unique_name="linear")

    @workflow.step
    def double(value: int) -> int:
        return value * 2

    @workflow.step
    def label(value: int) -> dict[str, Any]:
        return {"value": value}

    return workflow


def test_a_job_runs_its_steps_in_order_to_the_end() -> None:
    tester = WorkflowTester(_linear(), now=START)
    job = tester.submit("linear", initial_input_value=21)
    assert (job.status, job.submitted_at) == (JobStatus.QUEUED, START)

    assert tester.run() == 2

    done = tester.get_job(job.id)
    assert (done.status, done.last_return_value, done.percent_completed) == (
        JobStatus.COMPLETED,
        {"value": 42},
        100.0,
    )
    assert tester.steps_run == [(job.id, "double", 1), (job.id, "label", 1)]
    assert done.finished_at == START  # the clock did not move
    assert tester.app.AsyncResult(job.id).state == "COMPLETED"  # the job is its Celery result


def test_a_sleep_ends_when_the_clock_reaches_it() -> None:
    workflow = Workflow(unique_name="sleeper")

    @workflow.step
    def nap(value: int) -> int:
        raise Sleep(seconds=3 * 86400, retval=value + 1)

    @workflow.step
    def wake(value: int) -> int:
        return value * 10

    tester = WorkflowTester(workflow, now=START)
    job = tester.submit("sleeper", initial_input_value=1)
    tester.run()
    assert tester.get_job(job.id).status is JobStatus.SCHEDULED
    tester.advance(days=3, seconds=-1)
    assert tester.get_job(job.id).status is JobStatus.SCHEDULED
    tester.advance(seconds=1)
    done = tester.get_job(job.id)
    assert (done.status, done.last_return_value) == (JobStatus.COMPLETED, 20)
    assert done.timings[-1].started_at == START + timedelta(days=3)


def _approval() -> Workflow:
    workflow = Workflow(unique_name="approval")

    @workflow.step
    def ask(order: dict[str, Any]) -> dict[str, Any]:
        raise WaitForSignal("approved", timeout=3600, retval=order)

    @workflow.step
    def ship(
        order: dict[str, Any], approval: Annotated[dict[str, Any] | None, SignalPayload("approved")]
    ) -> dict[str, Any]:
        return {**order, "by": approval["by"] if approval else None}

    return workflow


def test_a_signal_releases_the_job_waiting_for_it() -> None:
    tester = WorkflowTester(_approval(), now=START)
    job = tester.submit("approval", initial_input_value={"sku": "A1"})
    tester.run()
    assert tester.get_job(job.id).status is JobStatus.SCHEDULED

    signalled = tester.signal(job.id, "approved", {"by": "ana"})
    assert signalled.status is JobStatus.QUEUED
    tester.run()
    assert tester.get_job(job.id).last_return_value == {"sku": "A1", "by": "ana"}


def test_a_signal_inside_a_django_transaction_queues_the_job_at_once(tmp_path: Path) -> None:
    # Tests of Django projects run inside a transaction that never commits.
    configure_django(tmp_path)
    from django.db import transaction

    tester = WorkflowTester(_approval(), now=START)
    job = tester.submit("approval", initial_input_value={"sku": "A1"})
    tester.run()
    with transaction.atomic():
        tester.signal(job.id, "approved", {"by": "ana"})
        tester.run()
        assert tester.get_job(job.id).status is JobStatus.COMPLETED
        transaction.set_rollback(True)


def test_a_signal_that_does_not_come_times_out() -> None:
    tester = WorkflowTester(_approval(), now=START)
    job = tester.submit("approval", initial_input_value={"sku": "A1"})
    tester.advance(minutes=59)
    assert tester.get_job(job.id).status is JobStatus.SCHEDULED
    tester.advance(minutes=1)
    failed = tester.get_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "SignalTimeout"


def _flaky(failures: int) -> tuple[WorkflowTester, list[datetime]]:
    """A tester whose one step fails `failures` times (retried every 60 s, 3 times at most),
    and the virtual times at which the step ran."""
    workflow = Workflow(unique_name="flaky")
    times: list[datetime] = []

    @workflow.step(autoretry_for=(ConnectionError,), max_retries=3, default_retry_delay=60)
    def charge(value: int, run: Annotated[StepRun, CurrentRun()]) -> int:
        times.append(tester.now)
        if run.attempt <= failures:
            raise ConnectionError("the bank is down")
        return value + run.attempt

    tester = WorkflowTester(workflow, now=START)
    return tester, times


def test_a_retried_step_runs_again_after_its_countdown() -> None:
    tester, times = _flaky(2)
    job = tester.submit("flaky", initial_input_value=1)

    tester.run()
    assert tester.advance(seconds=59) == 0  # the countdown is not over
    tester.advance(seconds=61)

    done = tester.get_job(job.id)
    assert (done.status, done.last_return_value) == (JobStatus.COMPLETED, 4)
    assert tester.steps_run == [(job.id, "charge", 1), (job.id, "charge", 2), (job.id, "charge", 3)]
    assert times == [START, START + timedelta(seconds=60), START + timedelta(seconds=120)]


def test_retries_stop_at_max_retries_and_the_job_fails() -> None:
    tester, times = _flaky(10)
    job = tester.submit("flaky", initial_input_value=1)
    tester.advance(hours=1)
    failed = tester.get_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("ConnectionError", "the bank is down")
    assert len(times) == 4  # the first run and max_retries=3


def test_advance_runs_what_falls_due_on_the_way_at_its_moment() -> None:
    # A retry due at +10 s, then a 60 s sleep: advancing 100 s at once must see the sleep
    # start at +10 s and end at +70 s, as on a worker, not start at +100 s.
    workflow = Workflow(unique_name="chain")
    attempts: list[int] = []

    @workflow.step(autoretry_for=(ConnectionError,), max_retries=1, default_retry_delay=10)
    def first(value: int) -> int:
        attempts.append(value)
        if len(attempts) == 1:
            raise ConnectionError("once")
        raise Sleep(seconds=60, retval=value)

    @workflow.step
    def second(value: int) -> int:
        return value + 1

    tester = WorkflowTester(workflow, now=START)
    job = tester.submit("chain", initial_input_value=1)
    tester.advance(seconds=100)
    done = tester.get_job(job.id)
    assert done.status is JobStatus.COMPLETED
    assert done.timings[-1].started_at == START + timedelta(seconds=70)
    assert tester.now == START + timedelta(seconds=100)


def test_a_scheduled_start_is_released_when_due_and_a_deadline_fails_it() -> None:
    tester = WorkflowTester(_linear(), now=START)
    later = tester.submit(
        "linear", initial_input_value=1, requested_start_time=START + timedelta(hours=1)
    )
    late = tester.submit(
        "linear",
        initial_input_value=1,
        requested_start_time=START + timedelta(hours=2),
        deadline=START + timedelta(hours=1),
    )
    tester.advance(minutes=59)
    assert tester.get_job(later.id).status is JobStatus.SCHEDULED
    tester.advance(hours=2)
    assert tester.get_job(later.id).status is JobStatus.COMPLETED
    assert tester.get_job(late.id).status is JobStatus.FAILED


def test_errors_and_aborts_end_jobs_as_on_a_worker() -> None:
    workflow = Workflow(unique_name="outcomes")

    @workflow.step
    def decide(mode: str) -> Any:
        if mode == "raise":
            raise KeyError("missing")
        if mode == "abort":
            raise AbortJob("nothing to do")
        if mode == "not-json":
            return {1: "a key that JSON turns into a string"}
        return mode

    tester = WorkflowTester(workflow, now=START)
    jobs = {
        mode: tester.submit("outcomes", initial_input_value=mode)
        for mode in ("raise", "abort", "not-json", "ok")
    }
    tester.run()
    found = {mode: tester.get_job(job.id) for mode, job in jobs.items()}
    assert {mode: job.status for mode, job in found.items()} == {
        "raise": JobStatus.FAILED,
        "abort": JobStatus.ABORTED,
        "not-json": JobStatus.FAILED,
        "ok": JobStatus.COMPLETED,
    }
    assert [found[mode].error.type for mode in ("raise", "abort", "not-json")] == [  # type: ignore[union-attr]
        "KeyError",
        "AbortJob",
        "InvalidInputError",
    ]


def test_a_cancelled_waiting_job_runs_no_more_steps() -> None:
    tester = WorkflowTester(_approval(), now=START)
    job = tester.submit("approval", initial_input_value={"sku": "A1"})
    tester.run()
    assert tester.cancel(job.id).status is JobStatus.CANCELLED
    tester.advance(days=1)
    assert tester.steps_run == [(job.id, "ask", 1)]
    assert tester.get_job(job.id).status is JobStatus.CANCELLED


def test_lifecycle_signals_are_sent_as_on_a_worker() -> None:
    completed: list[str] = []

    def receiver(sender: str, job: Any, **kwargs: Any) -> None:
        completed.append(f"{sender} {job.id}")

    signals.job_completed.connect(receiver)
    try:
        tester = WorkflowTester(_linear(), now=START)
        job = tester.submit("linear", initial_input_value=1)
        tester.run()
    finally:
        signals.job_completed.disconnect(receiver)
    assert completed == [f"ergate.linear.label {job.id}"]


def test_list_jobs_filters_as_list_jobs_does() -> None:
    tester = WorkflowTester(_linear(), _approval(), now=START)
    done = tester.submit("linear", initial_input_value=1, tags={"order": "A-17"}, id="job-a")
    waiting = tester.submit("approval", initial_input_value={}, id="job-b")
    tester.run()
    # Submitted at the same virtual moment: newest first means the higher id first.
    assert [job.id for job in tester.list_jobs().jobs] == [waiting.id, done.id]
    assert [job.id for job in tester.list_jobs(status="COMPLETED").jobs] == [done.id]
    assert [job.id for job in tester.list_jobs(tags={"order": "A-17"}).jobs] == [done.id]
    assert [job.id for job in tester.list_jobs(workflow="approval").jobs] == [waiting.id]


def test_testers_are_apart() -> None:
    first, second = WorkflowTester(_linear(), now=START), WorkflowTester(_linear(), now=START)
    first.submit("linear", initial_input_value=1, id="order-1")
    second.submit("linear", initial_input_value=2, id="order-1")
    first.run()
    assert first.get_job("order-1").status is JobStatus.COMPLETED
    assert second.get_job("order-1").status is JobStatus.QUEUED
    assert second.list_jobs().jobs[0].initial_input_value == 2


def test_settings_are_the_apps() -> None:
    tester = WorkflowTester(_linear(), now=START, settings={"ergate_timings_kept": 1})
    job = tester.submit("linear", initial_input_value=1)
    tester.run()
    assert [timing.step for timing in tester.get_job(job.id).timings] == ["label"]


def test_run_stops_a_step_that_retries_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tester_module, "MAX_MESSAGES_PER_RUN", 20)
    workflow = Workflow(unique_name="forever")

    @workflow.step(autoretry_for=(ConnectionError,), max_retries=None, default_retry_delay=0)
    def spin(value: int) -> int:
        raise ConnectionError("again")

    tester = WorkflowTester(workflow, now=START)
    tester.submit("forever", initial_input_value=1)
    with pytest.raises(RuntimeError, match="retry forever without a countdown"):
        tester.run()


def test_the_fixture_is_an_empty_tester(workflow_tester: WorkflowTester) -> None:
    assert workflow_tester.list_jobs().jobs == []
    workflow_tester.register(_linear())
    job = workflow_tester.submit("linear", initial_input_value=2)
    workflow_tester.run()
    assert workflow_tester.get_job(job.id).last_return_value == {"value": 4}
