"""Every way a step ends is an outcome, and it always fits: a step that fails where the step
path itself fails (a wait no clock reaches, a value too deeply nested to store, an error that
cannot be described) ends its job FAILED at once; whatever size a step brought a record to,
the sweep, a claim, a cancel and a retry still write it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from ergate_celery import InvalidInputError, JobStatus, Sleep, Workflow
from ergate_celery.scheduling.beat import recover_stuck_jobs

from .faults import WAIT
from .support import Setup, in_process_worker, wait_until

#: The queue of the padding workflow's second step: consumed only once the test says.
LATER = "ergate-test-later"


class _UndescribableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no description")


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _ending_workflow() -> Workflow:
    workflow = Workflow(unique_name="endings")

    @workflow.step
    def end(how: str) -> Any:
        if how == "sleep":
            raise Sleep(seconds=1e12)
        if how == "nested":
            return _nested(3000)
        raise _UndescribableError()

    @workflow.step
    def unreached(value: Any) -> Any:
        return value

    return workflow


@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_a_step_path_that_fails_ends_the_job_failed_at_once(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name, ergate_stuck_after=3600)
    setup.ergate.register_workflow(_ending_workflow())
    ends = {
        "sleep": "InvalidInputError",
        "nested": "InvalidInputError",
        "str": "_UndescribableError",
    }
    with in_process_worker(setup.app):
        jobs = {how: setup.ergate.submit_job("endings", initial_input_value=how) for how in ends}
        done = {how: setup.ergate.wait_for_job(job.id, timeout=WAIT) for how, job in jobs.items()}
    for how, kind in ends.items():
        job = done[how]
        assert job.status is JobStatus.FAILED, (how, job.status)
        assert job.error is not None
        assert (job.error.type, job.error.step, job.attempt) == (kind, "end", 1), how
    assert "past the last date" in done["sleep"].error.message  # type: ignore[union-attr]
    assert "200 levels deep" in done["nested"].error.message  # type: ignore[union-attr]
    assert "could not be described" in done["str"].error.message  # type: ignore[union-attr]

    # Deep payloads are refused before anything is written.
    with pytest.raises(InvalidInputError, match="200 levels deep"):
        setup.ergate.submit_job("endings", initial_input_value=_nested(100_000))
    with pytest.raises(InvalidInputError, match="200 levels deep"):
        setup.ergate.signal_job(str(jobs["str"].id), "late", payload=_nested(100_000))


def _padding_workflow() -> Workflow:
    workflow = Workflow(unique_name="padding")

    @workflow.step
    def grow(size: int) -> str:
        return "x" * size

    @workflow.step(queue=LATER)
    def measure(padding: str) -> int:
        return len(padding)

    return workflow


@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_lifecycle_writes_fit_whatever_size_a_step_reached(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    """Steps bring records to every size up to `ergate_max_payload_bytes`; then their next
    step's message is lost, and the sweep publishes them again ten times over, a cancel and a
    retry follow: every write fits, and each job completes (or failed at its own outcome,
    too large to store, which says so)."""
    limit = 6000
    setup = make_setup(setup_name, ergate_max_payload_bytes=limit, ergate_stuck_after=1)
    setup.ergate.register_workflow(_padding_workflow())
    sizes = range(limit - 1600, limit, 100)  # the record holds ~900 bytes besides
    with in_process_worker(setup.app):
        jobs = [setup.ergate.submit_job("padding", initial_input_value=n) for n in sizes]

        def grown() -> bool:
            found = [setup.ergate.get_job(job.id) for job in jobs]
            return all(job.steps_completed == 1 or job.is_final for job in found)

        wait_until(grown, what="the first step of every job done")
    waiting = [job for job in jobs if not setup.ergate.get_job(job.id).is_final]
    assert waiting, "some records must be near the limit and still running"
    now = setup.ergate.runtime.clock()
    for day in range(1, 13):
        # Each pass finds them idle past ergate_stuck_after and publishes them again.
        assert recover_stuck_jobs(setup.ergate, now=now + timedelta(days=day)) == len(waiting)
    setup.ergate.cancel_job(waiting[0].id)
    setup.ergate.retry_job(str(waiting[0].id))
    queues = [setup.conf["task_default_queue"], LATER]
    with in_process_worker(setup.app, queues=queues):
        done = [setup.ergate.wait_for_job(job.id, timeout=WAIT) for job in jobs]

    for job in done:
        if job.status is JobStatus.FAILED:
            assert job.error is not None
            assert (job.error.type, job.error.step) == ("InvalidInputError", "grow"), job.error
            assert "ergate_max_payload_bytes" in job.error.message
            continue
        assert job.status is JobStatus.COMPLETED, (job.status, job.error)
        assert job.last_return_value == job.initial_input_value
    completed = [job for job in done if job.status is JobStatus.COMPLETED]
    near = completed[-1]
    assert len(near.recoveries) <= 10
    # The next size up could not store its outcome: `near` brought its record to the limit.
    assert done[len(completed)].status is JobStatus.FAILED
    assert [job.initial_input_value for job in completed] == list(sizes)[: len(completed)]
