"""Retrying, pausing and resuming on real workers, on every broker/backend setup: a retry
reruns only the step a job stopped at, with its input; two racing retries publish once; a
retry racing a cancel ends in one state; a paused workflow starts no step (its messages are
parked, its due jobs released parked) and resume runs them."""

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
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
from ergate_celery.release import release_due_jobs
from ergate_celery.stores import store_for_backend

from .support import Setup, wait_until

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


def test_two_racing_retries_publish_once(setup: Setup, worker: Any) -> None:
    runs: Counter[str] = Counter()
    broken = {"o-1"}
    setup.ergate.register_workflow(_flaky("orders", runs, broken))
    with worker():
        job_id = str(submit_job("orders", initial_input_value={"id": "o-1"}).id)
        _final(setup, job_id)
        broken.clear()
        outcomes: list[str] = []
        barrier = threading.Barrier(2)

        def retry() -> None:
            barrier.wait()
            try:
                retry_job(job_id)
                outcomes.append("retried")
            except JobStateError:
                outcomes.append("refused")

        threads = [threading.Thread(target=retry) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["refused", "retried"]
        assert _final(setup, job_id).status is JobStatus.COMPLETED
    assert runs["charge"] == 2
    assert runs["ship"] == 1


def test_a_retry_racing_a_cancel_ends_in_one_state(setup: Setup, worker: Any) -> None:
    runs: Counter[str] = Counter()
    broken = {"o-1"}
    setup.ergate.register_workflow(_flaky("orders", runs, broken))
    with worker():
        job_id = str(submit_job("orders", initial_input_value={"id": "o-1"}).id)
        _final(setup, job_id)
        broken.clear()
        barrier = threading.Barrier(2)

        def retry() -> None:
            barrier.wait()
            retry_job(job_id)

        def cancel() -> None:
            barrier.wait()
            setup.ergate.cancel_job(job_id)

        threads = [threading.Thread(target=retry), threading.Thread(target=cancel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = _final(setup, job_id)
    # Either the cancel came first (a finished job is left alone) and the retry completed it,
    # or the retry came first and the cancel stopped it: never both, never stuck.
    assert final.status in (JobStatus.COMPLETED, JobStatus.CANCELLED)
    assert runs["ship"] <= 1
    if final.status is JobStatus.COMPLETED:
        assert runs["ship"] == 1
    assert setup.ergate.get_job(job_id).status is final.status


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
