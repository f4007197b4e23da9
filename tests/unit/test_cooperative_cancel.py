"""A running step learns that its job was cancelled: `progress.report()` raises
`JobCancelled` and `StepRun.cancel_requested()` turns true, the step's `finally` and its
dependencies' teardown run, the job ends CANCELLED and no further step runs."""

import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

import pytest

from ergate_celery import (
    CurrentRun,
    Depends,
    JobCancelled,
    JobStatus,
    Progress,
    ProgressReporter,
    StepRun,
    Workflow,
)
from ergate_celery.model.progress import CancelWatch
from ergate_celery.testing import WorkflowTester

START = datetime(2030, 1, 1, tzinfo=UTC)
#: Each report is written (and each check reads the store): no throttle to wait out.
EVERY_REPORT = {"ergate_progress_interval": 1e-9}


def _long_step_workflow(tester_of: list[WorkflowTester], seen: list[str]) -> Workflow:
    workflow = Workflow(unique_name="long_export")

    def connection() -> Iterator[str]:
        try:
            yield "conn"
        finally:
            seen.append("connection closed")

    @workflow.step
    def export(
        rows: int,
        progress: Annotated[ProgressReporter, Progress()],
        db: Annotated[str, Depends(connection)],
    ) -> int:
        try:
            for row in range(rows):
                if row == 3:
                    tester_of[0].cancel(tester_of[0].list_jobs().jobs[0].id)
                progress.report(row / rows)
                seen.append(f"row {row}")
        finally:
            seen.append("finally")
        return rows

    @workflow.step
    def notify(rows: int) -> int:
        seen.append("notify")
        return rows

    return workflow


def test_a_long_step_stops_at_its_next_report_after_a_cancel() -> None:
    holder: list[WorkflowTester] = []
    seen: list[str] = []
    tester = WorkflowTester(_long_step_workflow(holder, seen), now=START, settings=EVERY_REPORT)
    holder.append(tester)
    job = tester.submit("long_export", initial_input_value=10)
    tester.run()
    done = tester.get_job(job.id)
    assert done.status is JobStatus.CANCELLED
    assert seen == ["row 0", "row 1", "row 2", "finally", "connection closed"]
    assert done.current_step_name == "export"  # a retry runs the stopped step again
    assert done.error is None
    assert [step for _, step, _ in tester.steps_run] == ["export"]


def test_cancel_requested_turns_true_and_the_step_may_raise() -> None:
    workflow = Workflow(unique_name="polite")
    checks: list[bool] = []
    holder: list[WorkflowTester] = []

    @workflow.step
    def work(value: int, run: Annotated[StepRun, CurrentRun()]) -> int:
        checks.append(run.cancel_requested())
        holder[0].cancel(run.job_id)
        checks.append(run.cancel_requested())
        if run.cancel_requested():
            raise JobCancelled("stopping as asked")
        return value

    @workflow.step
    def after(value: int) -> int:
        checks.append(True)
        return value

    tester = WorkflowTester(workflow, now=START, settings=EVERY_REPORT)
    holder.append(tester)
    job = tester.submit("polite", initial_input_value=1)
    tester.run()
    assert tester.get_job(job.id).status is JobStatus.CANCELLED
    assert checks == [False, True]


def test_the_watch_reads_at_most_once_an_interval_and_remembers() -> None:
    reads: list[int] = []
    stored = [False]
    ticks = [0.0]

    def read() -> bool:
        reads.append(1)
        return stored[0]

    watch = CancelWatch(read, interval=1.0, clock=lambda: ticks[0])
    assert (watch.requested(), len(reads)) == (False, 1)
    stored[0] = True
    assert (watch.requested(), len(reads)) == (False, 1)  # within the interval: not read
    ticks[0] = 1.0
    assert (watch.requested(), len(reads)) == (True, 2)
    stored[0] = False
    ticks[0] = 5.0
    assert (watch.requested(), len(reads)) == (True, 2)  # remembered


def test_a_report_raises_once_the_write_saw_the_cancel() -> None:
    watch = CancelWatch(lambda: pytest.fail("a write just read the record"), interval=60)
    written: list[float] = []

    def write(percent: float) -> bool:
        written.append(percent)
        return len(written) > 1

    reporter = ProgressReporter(0.0, 100.0, write, interval=0, cancel=watch)
    reporter.report(0.1)
    with pytest.raises(JobCancelled):
        reporter.report(0.2)
    with pytest.raises(JobCancelled):
        reporter.report(0.2)  # the same fraction again: still cancelled
    assert written == [10.0, 20.0]


def test_progress_while_cancelling_logs_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    workflow = Workflow(unique_name="chatty")
    holder: list[WorkflowTester] = []

    @workflow.step
    def work(value: int, progress: Annotated[ProgressReporter, Progress()]) -> int:
        holder[0].cancel(holder[0].list_jobs().jobs[0].id)
        # A step that ignores the cancel: its further writes must not flood the log.
        for fraction in (0.5, 0.6, 0.7, 0.8):
            with contextlib.suppress(JobCancelled):
                progress.report(fraction)
        return value

    tester = WorkflowTester(workflow, now=START, settings=EVERY_REPORT)
    holder.append(tester)
    with caplog.at_level(logging.DEBUG, logger="ergate_celery"):
        job = tester.submit("chatty", initial_input_value=1)
        tester.run()
    changes = [
        (r.levelno, r.getMessage()) for r in caplog.records if "-> CANCELLING" in r.getMessage()
    ]
    assert [level for level, _ in changes] == [logging.INFO] + [logging.DEBUG] * 4, changes
    assert tester.get_job(job.id).status is JobStatus.COMPLETED  # it returned: the last step


def test_wait_for_job_times_out_with_one_class_both_timeouts_catch() -> None:
    import celery.exceptions

    from ergate_celery import JobTimeoutError
    from ergate_celery.operations.reading import wait_for_job

    tester = WorkflowTester(_long_step_workflow([], []), now=START)
    job = tester.submit("long_export", initial_input_value=1)
    for caught in (TimeoutError, celery.exceptions.TimeoutError, JobTimeoutError):
        with pytest.raises(caught, match="is still QUEUED"):
            wait_for_job(tester.runtime, str(job.id), timeout=0.01)
