"""A worker killed while a step runs, between storing a step and publishing the next, or right
after its step raised `WaitForSignal`: the job completes, each step's outcome stored once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ergate_celery import JobStatus

from .apps import fault_app, waiting_app
from .faults import (
    FAST_REDIS_REDELIVERY,
    WAIT,
    children_of,
    kill_worker,
    recover_once,
    step_counts,
    step_runs,
    worker_process,
)
from .support import Setup, wait_until


@pytest.mark.setup("redis", "rabbitmq_postgres")
@pytest.mark.parametrize("kill", ["pool_child", "whole_worker"])
def test_sigkilled_worker_step_reruns_and_job_completes(
    setup_name: str, make_setup: Callable[..., Setup], kill: str
) -> None:
    """Killing the pool child exercises `reject_on_worker_lost` (the surviving main process
    requeues the message); killing the whole worker exercises the broker's redelivery of an
    unacknowledged message (at once on RabbitMQ, after `visibility_timeout` on Redis)."""
    extra = {"broker_transport_options": FAST_REDIS_REDELIVERY} if setup_name == "redis" else {}
    # A killed pool process's claim is let go at once by the worker's main process (its
    # lease is longer than the test waits); a whole worker's lease has to expire.
    lease = 120 if kill == "pool_child" else 2
    setup = make_setup(setup_name, ergate_lease_seconds=lease, **extra)
    setup.ergate.register_workflow(fault_app.slow)
    job = setup.ergate.submit_job("fault_slow", initial_input_value=1)
    job_id = str(job.id)

    with worker_process(setup, "first") as worker:
        running = wait_until(lambda: step_runs(setup, job_id, "second"), what="step 2 started")
        stored = setup.ergate.get_job(job_id)
        assert (stored.status, stored.current_step, stored.attempt) == (JobStatus.RUNNING, 1, 1)
        victim = running[0]["pid"]
        assert victim in children_of(worker.pid), "step 2 runs in a pool process of the worker"
        if kill == "pool_child":
            os.kill(victim, signal.SIGKILL)
            done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
        else:
            kill_worker(worker)
    if kill == "whole_worker":
        # Nothing runs the job now: it waits, RUNNING, for its message to come back.
        assert setup.ergate.get_job(job_id).status is JobStatus.RUNNING
        with worker_process(setup, "fresh"):
            done = setup.ergate.wait_for_job(job_id, timeout=WAIT)

    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == (1 + 1) * 10 + 3
    assert (done.steps_completed, done.percent_completed) == (3, 100.0)
    counts = step_counts(setup, job_id)
    assert counts["first"] == 1
    assert counts["second"] >= 2
    assert counts["third"] == 1
    # Every start of step 2 was claimed as a new attempt, and its hop stayed the same.
    second = step_runs(setup, job_id, "second")
    assert sorted(run["attempt"] for run in second) == list(range(1, len(second) + 1))
    assert {run["hop"] for run in second} == {1}
    assert step_runs(setup, job_id, "third")[0]["attempt"] == 1


@contextmanager
def _killed_after_commit(setup: Setup, redelivered: bool = True) -> Iterator[str]:
    """Run a `fault_window` job whose worker process dies right after its first step is
    stored and before the second is published; yields the job id, with a worker still up,
    once the requeued message of the first step (if it is redelivered) was handled again."""
    setup.ergate.register_workflow(fault_app.window)
    flag = setup.tmp_path / "killed-after-commit"
    job = setup.ergate.submit_job("fault_window", initial_input_value=1)
    job_id = str(job.id)
    with worker_process(setup, "window", env={"ERGATE_FAULT_KILL_AFTER_COMMIT": str(flag)}):
        wait_until(flag.exists, what="the pool process killed itself after the commit")
        if redelivered:
            # The requeued first message hands the job on: the sweep is not running here.
            wait_until(
                lambda: (
                    setup.ergate.get_job(job_id).current_step > 1
                    or setup.ergate.get_job(job_id).is_final
                ),
                what="the redelivered first step to publish the second",
            )
        yield job_id


@pytest.mark.setup("redis")
def test_worker_killed_between_commit_and_publish_job_completes(
    make_setup: Callable[..., Setup],
) -> None:
    setup = make_setup("redis")
    with _killed_after_commit(setup) as job_id:
        done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert step_counts(setup, job_id) == {"commit": 1, "publish": 1, "done": 1}


@pytest.mark.setup("redis")
def test_job_stranded_between_commit_and_publish_is_recovered_by_sweep(
    make_setup: Callable[..., Setup],
) -> None:
    # Without late acknowledgement nothing is redelivered, so only the sweep can hand it on.
    # (The kombu publish: the one-trip publish leaves no such window, see below.)
    setup = make_setup(
        "redis", ergate_stuck_after=1, ergate_acks_late=False, ergate_redis_one_trip=False
    )
    with _killed_after_commit(setup, redelivered=False) as job_id:
        stranded = setup.ergate.get_job(job_id)
        # QUEUED at step #1 ('publish') with no message anywhere, until the sweep requeues it.
        assert (stranded.status, stranded.current_step) == (JobStatus.QUEUED, 1)
        recover_once(setup)
        done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == 4
    assert len(done.recoveries) == 1
    assert "republish: QUEUED at step 'publish'" in done.recoveries[0]
    assert step_counts(setup, job_id) == {"commit": 1, "publish": 1, "done": 1}


@pytest.mark.setup("redis")
def test_no_job_is_stranded_between_commit_and_publish_with_the_one_trip_publish(
    make_setup: Callable[..., Setup],
) -> None:
    # The same death, right after the outcome is stored: the next step's message was written
    # with it, so the job goes on without redelivery (none: early acknowledgement) or sweep.
    setup = make_setup("redis", ergate_acks_late=False, ergate_redis_one_trip=True)
    with _killed_after_commit(setup, redelivered=False) as job_id:
        done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert done.recoveries == []
    assert step_counts(setup, job_id) == {"commit": 1, "publish": 1, "done": 1}


def _marks(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.setup("redis", "rabbitmq_postgres")
@pytest.mark.parametrize("kill_at", ["raised", "stored"])
def test_worker_killed_right_after_wait_for_signal_stores_the_wait_once(
    setup_name: str, make_setup: Callable[..., Setup], kill_at: str
) -> None:
    """`raised`: the pool process dies after the step raised, before its outcome is stored;
    the requeued message runs the step again. `stored`: it dies right after the wait is
    stored; the requeued message is dropped. Either way the job waits once, and completes
    when signalled."""
    extra = {"broker_transport_options": FAST_REDIS_REDELIVERY} if setup_name == "redis" else {}
    setup = make_setup(setup_name, ergate_lease_seconds=2, **extra)
    for workflow in waiting_app.WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    flag, marks = setup.tmp_path / "killed", setup.tmp_path / "marks"
    env = {"ERGATE_WAIT_KILL": str(flag), "ERGATE_WAIT_KILL_AT": kill_at}
    env["ERGATE_WAIT_MARKS"] = str(marks)
    job_id = str(setup.ergate.submit_job("approval", initial_input_value={"n": 1}).id)
    with worker_process(setup, "waiting", env=env, module="tests.apps.waiting_app"):
        wait_until(flag.exists, WAIT, what="the pool process killed itself")
        waiting = wait_until(
            lambda: (job := setup.ergate.get_job(job_id)).wait is not None and job,
            WAIT,
            what="the wait stored",
        )
        assert waiting.status is JobStatus.SCHEDULED
        # The requeued message is handled (run again, or dropped) before the signal.
        expected_runs = 2 if kill_at == "raised" else 1
        wait_until(lambda: len(_marks(marks)) >= expected_runs, WAIT, what="the rerun")
        time.sleep(1.0)
        assert setup.ergate.get_job(job_id).wait == waiting.wait
        setup.ergate.signal_job(job_id, "approved", {"by": "ana"})
        done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == {"n": 1, "answer": {"by": "ana"}}
    assert [timing.step for timing in done.timings] == ["ask", "decide"]
    assert len(_marks(marks)) == expected_runs
