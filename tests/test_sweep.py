"""The stuck-job sweep: a lost step message is found and published again (or the job failed
when configured), and a progressing job is left alone. A hung step is not the sweep's: its
worker renews its lease (tests/test_liveness.py)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest

from ergate_celery import Job, JobStatus, Workflow
from ergate_celery.scheduling.beat import recover_stuck_jobs

from .faults import WAIT, recover_once
from .support import Setup, in_process_worker, wait_until
from .workflows import counting_workflow


def _purge_first_step(setup: Setup, runs: Counter[str], name: str) -> Job:
    """Submit a job with no worker up, then lose its first step's message."""
    setup.ergate.register_workflow(counting_workflow(name, runs))
    job = setup.ergate.submit_job(name, initial_input_value=5)
    # The broker may route the message a moment after the publish returned: purge until it
    # has removed exactly that one message.
    purged = [0]

    def removed_it() -> bool:
        purged[0] += setup.app.control.purge() or 0
        return purged[0] >= 1

    wait_until(removed_it, what="the first step's message to be purged")
    assert purged[0] == 1
    # Just submitted: not stuck yet, whatever the broker did with its message (asked with
    # the submit time, as a slow machine may already be past ergate_stuck_after).
    assert recover_stuck_jobs(setup.ergate, now=job.submitted_at) == 0
    return job


def test_purged_queue_job_is_recovered_by_sweep(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name, ergate_stuck_after=1)
    runs: Counter[str] = Counter()
    job = _purge_first_step(setup, runs, "lost")
    job_id = str(job.id)
    recover_once(setup)
    requeued = setup.ergate.get_job(job_id)
    assert requeued.status is JobStatus.QUEUED
    with in_process_worker(setup.app):
        done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
    _assert_recovered_once(done, runs)


@pytest.mark.setup("redis")
def test_purged_queue_job_is_recovered_by_beat_sweep(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    """The same, with `ergate.recover_stuck_jobs` sent by a real beat and run by a worker."""
    # A pause of over ergate_stuck_after between two steps would be swept again: 2 s of it.
    setup = make_setup(setup_name, ergate_stuck_after=2, ergate_stuck_check_interval=0.5)
    runs: Counter[str] = Counter()
    job = _purge_first_step(setup, runs, "lost")
    beat = setup.celery("beat", "-s", str(setup.tmp_path / "schedule"))
    with in_process_worker(setup.app), beat:
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    _assert_recovered_once(done, runs)


def _assert_recovered_once(done: Job, runs: Counter[str]) -> None:
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == (5 + 1) * 2 - 1
    assert runs == {"a": 1, "b": 1, "c": 1}
    assert len(done.recoveries) == 1
    assert " republish: QUEUED at step 'a' " in done.recoveries[0]


def test_purged_queue_job_is_failed_by_sweep_when_configured(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name, ergate_stuck_after=1, ergate_stuck_action="fail")
    runs: Counter[str] = Counter()
    job = _purge_first_step(setup, runs, "lost_fail")
    recover_once(setup)
    failed = setup.ergate.get_job(str(job.id))
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "StuckJob"
    assert "QUEUED at step 'a'" in failed.error.message
    assert len(failed.recoveries) == 1
    assert " fail: QUEUED at step 'a' " in failed.recoveries[0]
    # A final job is not stuck: later sweeps leave it alone.
    assert recover_stuck_jobs(setup.ergate) == 0
    assert runs == {}


def test_sweep_leaves_progressing_job_alone(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    """A job whose steps each take well under `ergate_stuck_after` is never recovered."""
    setup = make_setup(setup_name, ergate_stuck_after=5)
    workflow = Workflow(unique_name="progressing")
    for index in range(4):

        def step(x: int) -> int:
            time.sleep(0.3)
            return x + 1

        step.__name__ = step.__qualname__ = f"step_{index}"
        workflow.step(step)
    setup.ergate.register_workflow(workflow)
    sweeps = []
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("progressing", initial_input_value=0)
        while not setup.ergate.get_job(str(job.id)).is_final and len(sweeps) < 200:
            sweeps.append(recover_stuck_jobs(setup.ergate))
            time.sleep(0.1)
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == 4
    assert sweeps
    assert set(sweeps) == {0}
    assert done.recoveries == []
