"""Retrying, pausing and resuming on real workers, on every broker/backend setup: a retry
reruns only the step a job stopped at, with its input; two racing retries publish once; a
retry racing a cancel or the stuck-job sweep ends in one state; a paused workflow starts no
step (its messages are parked, its due jobs released parked) and resume runs them."""

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest

from ergate_celery import (
    JobNotFoundError,
    JobStateError,
    JobStatus,
    UnknownWorkflowError,
    Workflow,
    paused_workflows,
    retry_job,
    submit_job,
)
from ergate_celery.scheduling.beat import recover_stuck_jobs
from ergate_celery.scheduling.release import release_due_jobs
from ergate_celery.stores import store_for_backend

from .support import Setup, race, wait_until

WAIT = 60


def _flaky(name: str, runs: Counter[str], broken: set[str]) -> Workflow:
    workflow = Workflow(unique_name=name)

    @workflow.step
    def prepare(order: dict[str, Any]) -> dict[str, Any]:
        runs["prepare"] += 1
        return {**order, "prepared": True}

    @workflow.step
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        runs["charge"] += 1
        if order["id"] in broken:
            raise ConnectionError("payment provider down")
        return {**order, "charged": order["prepared"]}

    @workflow.step
    def ship(order: dict[str, Any]) -> dict[str, Any]:
        runs["ship"] += 1
        return {**order, "shipped": True}

    return workflow


def _final(setup: Setup, job_id: str) -> Any:
    return setup.ergate.wait_for_job(job_id, timeout=WAIT)


def test_a_retried_job_reruns_only_the_step_it_stopped_at(setup: Setup, worker: Any) -> None:
    runs: Counter[str] = Counter()
    broken = {"o-1"}
    setup.ergate.register_workflow(_flaky("orders", runs, broken))
    with worker():
        job = submit_job("orders", initial_input_value={"id": "o-1"}, tags={"order": "o-1"})
        failed = _final(setup, str(job.id))
        assert failed.status is JobStatus.FAILED
        assert failed.error.type == "ConnectionError"
        broken.clear()

        retried = retry_job(str(job.id))
        assert (retried.status, retried.current_step_name, retried.retries) == (
            JobStatus.QUEUED,
            "charge",
            1,
        )
        done = _final(setup, str(job.id))
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == {
        "id": "o-1",
        "prepared": True,
        "charged": True,
        "shipped": True,
    }
    assert runs == Counter(prepare=1, charge=2, ship=1)
    assert (done.retries, done.error, done.percent_completed) == (1, None, 100.0)
    assert [error.type for error in done.errors] == ["ConnectionError"]
    assert [timing.step for timing in done.timings] == ["prepare", "charge", "charge", "ship"]
    with pytest.raises(JobStateError, match="COMPLETED"):
        retry_job(str(job.id))
    with pytest.raises(JobNotFoundError):
        retry_job("no-such-job")


def test_retry_jobs_retries_every_failed_job_of_a_workflow(setup: Setup, worker: Any) -> None:
    runs: Counter[str] = Counter()
    broken = {"a", "b", "c"}
    setup.ergate.register_workflow(_flaky("orders", runs, broken))
    with worker():
        ids = [str(submit_job("orders", initial_input_value={"id": i}).id) for i in broken]
        ok = str(submit_job("orders", initial_input_value={"id": "ok"}).id)
        for job_id in [*ids, ok]:
            _final(setup, job_id)
        broken.clear()
        with pytest.raises(UnknownWorkflowError):
            setup.ergate.retry_jobs(status=JobStatus.FAILED, workflow="nope")
        assert setup.ergate.retry_jobs(status=JobStatus.FAILED, workflow="orders") == 3
        assert {_final(setup, job_id).status for job_id in ids} == {JobStatus.COMPLETED}
    assert runs["charge"] == 7
    assert runs["prepare"] == 4


@contextmanager
def _failed_then_fixed(setup: Setup, worker: Any) -> Iterator[tuple[str, Counter[str]]]:
    """With a worker up: job "o-1" of "orders", FAILED at `charge`, whose payment provider is
    back since; and the steps' runs."""
    runs: Counter[str] = Counter()
    broken = {"o-1"}
    setup.ergate.register_workflow(_flaky("orders", runs, broken))
    with worker():
        job_id = str(submit_job("orders", initial_input_value={"id": "o-1"}).id)
        _final(setup, job_id)
        broken.clear()
        yield job_id, runs


def test_two_racing_retries_publish_once(setup: Setup, worker: Any) -> None:
    with _failed_then_fixed(setup, worker) as (job_id, runs):
        outcomes: list[str] = []

        def retry() -> None:
            try:
                retry_job(job_id)
                outcomes.append("retried")
            except JobStateError:
                outcomes.append("refused")

        race(retry, retry)
        assert sorted(outcomes) == ["refused", "retried"]
        assert _final(setup, job_id).status is JobStatus.COMPLETED
    assert runs["charge"] == 2
    assert runs["ship"] == 1


def test_a_retry_racing_a_cancel_ends_in_one_state(setup: Setup, worker: Any) -> None:
    with _failed_then_fixed(setup, worker) as (job_id, runs):
        race(partial(retry_job, job_id), partial(setup.ergate.cancel_job, job_id))
        final = _final(setup, job_id)
    # Either the cancel came first (a finished job is left alone) and the retry completed it,
    # or the retry came first and the cancel stopped it: never both, never stuck.
    assert final.status in (JobStatus.COMPLETED, JobStatus.CANCELLED)
    assert runs["ship"] <= 1
    if final.status is JobStatus.COMPLETED:
        assert runs["ship"] == 1
    assert setup.ergate.get_job(job_id).status is final.status


def _sweep(setup: Setup, delay: float, swept: list[int]) -> None:
    """One sweep a day ahead, when every active job looks idle; how many it changed."""
    time.sleep(delay)
    swept.append(recover_stuck_jobs(setup.ergate, datetime.now(UTC) + timedelta(days=1)))


def test_a_retry_racing_the_sweep_ends_in_one_state(setup: Setup, worker: Any) -> None:
    """`retry_job` of a FAILED job while `recover_stuck_jobs` runs with a `now` a day ahead,
    so that to the sweep every active job is idle: whatever it finds, the job completes once.

    What the sweep may do is one `Recover` of the job (one index entry, one pass), written only
    if nothing moved since it read it: nothing (it read the index before the retry wrote its
    entry, or the job moved on); publish it again, QUEUED — a second message for the same
    step, dropped at its claim, so the step still runs once; or requeue it RUNNING, which it
    cannot tell from a lost one, its lease long expired at that `now` — the step runs once
    more and only one of the two outcomes is stored (the at-least-once rule of the guarantees).
    Steps before the retried one never run again, and each stored outcome is one timing.
    """
    runs: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()
    broken: set[str] = set()
    workflow = Workflow(unique_name="orders")

    def count(step: str, order: dict[str, Any]) -> None:
        with lock:
            runs[step, order["id"]] += 1

    @workflow.step
    def prepare(order: dict[str, Any]) -> dict[str, Any]:
        count("prepare", order)
        return {**order, "prepared": True}

    @workflow.step
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        count("charge", order)
        if order["id"] in broken:
            raise ConnectionError("payment provider down")
        time.sleep(0.02)  # a step that takes a moment: the sweep may find it RUNNING
        return {**order, "charged": True}

    @workflow.step
    def ship(order: dict[str, Any]) -> dict[str, Any]:
        count("ship", order)
        return {**order, "shipped": True}

    setup.ergate.register_workflow(workflow)
    rounds: list[tuple[str, int]] = []
    with worker():
        for round_ in range(8):
            order = f"o-{round_}"
            broken.add(order)
            job_id = str(submit_job("orders", initial_input_value={"id": order}).id)
            assert _final(setup, job_id).status is JobStatus.FAILED
            broken.discard(order)
            swept: list[int] = []
            # Spread where the sweep lands in the retry: at once, or a few ms after it.
            race(partial(retry_job, job_id), partial(_sweep, setup, 0.004 * (round_ % 4), swept))
            assert len(swept) == 1, "the sweep raised"
            rounds.append((job_id, swept[0]))
            assert _final(setup, job_id).status is JobStatus.COMPLETED
    # Checked once the worker has stopped: a run whose outcome was dropped has counted itself.
    outcomes = []
    for round_, (job_id, recovered) in enumerate(rounds):
        order = f"o-{round_}"
        job = setup.ergate.get_job(job_id)
        assert job.status is JobStatus.COMPLETED, job.error
        assert job.last_return_value == {
            "id": order,
            "prepared": True,
            "charged": True,
            "shipped": True,
        }
        assert (job.retries, job.error, job.percent_completed) == (1, None, 100.0)
        assert [error.type for error in job.errors] == ["ConnectionError"]
        assert [timing.step for timing in job.timings] == ["prepare", "charge", "charge", "ship"]
        # The sweep changed this job as often as it said (nothing else is in its index) and
        # wrote one line for it.
        assert len(job.recoveries) == recovered <= 1
        extra = Counter[str]()
        for line in job.recoveries:
            found = re.search(
                r" (?:republish|requeue): (QUEUED|RUNNING) at step '(charge|ship)' after (\d) ",
                line,
            )
            assert found is not None, line
            status, step, done = found.groups()
            assert int(done) == ["prepare", "charge", "ship"].index(step), line
            if status == "RUNNING":
                extra[step] += 1  # taken for a hung step: run again, one outcome stored
            outcomes.append(f"{status} at {step}")
        assert runs["prepare", order] == 1  # never again after the retry
        assert runs["charge", order] == 2 + extra["charge"]  # the failed run, then the retry
        assert runs["ship", order] == 1 + extra["ship"]
    print("sweep outcomes:", Counter(outcomes) or "none", "in", len(rounds), "rounds")


def test_a_paused_workflow_parks_its_steps_and_resume_runs_them(setup: Setup, worker: Any) -> None:
    runs: Counter[str] = Counter()
    setup.ergate.register_workflow(_flaky("orders", runs, set()))
    assert setup.ergate.pause_workflow("orders") is True
    assert paused_workflows() == {"orders"}
    with pytest.raises(UnknownWorkflowError):
        setup.ergate.pause_workflow("nope")
    soon = datetime.now(UTC) + timedelta(seconds=1)
    with worker():
        queued = str(submit_job("orders", initial_input_value={"id": "q"}).id)
        scheduled = str(
            submit_job("orders", initial_input_value={"id": "s"}, requested_start_time=soon).id
        )
        wait_until(lambda: setup.ergate.get_job(queued).parked, WAIT, what="the step parked")
        wait_until(lambda: datetime.now(UTC) > soon, 5)
        release_due_jobs(setup.ergate.runtime)
        released = setup.ergate.get_job(scheduled)
        assert (released.status, released.parked) == (JobStatus.QUEUED, True)
        assert runs == Counter()
        parked = setup.ergate.list_jobs(status="QUEUED", workflow="orders").jobs
        assert {str(job.id) for job in parked if job.parked} == {queued, scheduled}

        assert setup.ergate.resume_workflow("orders") == 2
        assert paused_workflows() == set()
        assert _final(setup, queued).status is JobStatus.COMPLETED
        assert _final(setup, scheduled).status is JobStatus.COMPLETED
    assert runs == Counter(prepare=2, charge=2, ship=2)


def test_a_pause_is_shared_through_the_store(setup: Setup) -> None:
    setup.ergate.register_workflow(_flaky("orders", Counter(), set()))
    setup.ergate.pause_workflow("orders")
    # A store of its own, as another process or a restarted worker has, reads the pause.
    index = setup.ergate.settings.index_name_of(setup.app.main)
    other = store_for_backend(setup.app.backend, 1_000_000, index_name=index)
    try:
        assert other.paused_workflows() == {"orders"}
    finally:
        other.close()
    assert setup.ergate.pause_workflow("orders") is False
    assert setup.ergate.resume_workflow("orders") == 0
    assert setup.ergate.paused_workflows() == set()
