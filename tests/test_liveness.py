"""Liveness from the worker: a step's worker renews its claim's lease while the step runs, so
neither a misleading message (a copy Redis restored past its visibility timeout) nor a step
that reports no new progress, hangs, or waits in a backlog is ever run twice at once, requeued
or failed as `WorkerLost`; only a time limit ends a step whose worker lives. Timers are
shortened to seconds: the effects they stand for take hours with the defaults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ergate_celery import JobStatus
from ergate_celery.scheduling.beat import recover_stuck_jobs

from .apps import liveness_app
from .faults import FAST_REDIS_REDELIVERY, WAIT, kill_worker, step_runs, worker_process
from .support import Setup, wait_until

MODULE = "tests.apps.liveness_app"


def _finished(setup: Setup, job_ids: list[str], sweep: bool = False) -> list[Any]:
    """Wait until every job is final, running the sweep between looks when asked."""

    def all_final() -> list[Any] | None:
        if sweep:
            recover_stuck_jobs(setup.ergate)
        jobs = [setup.ergate.get_job(job_id) for job_id in job_ids]
        return jobs if all(job.is_final for job in jobs) else None

    return wait_until(all_final, 120, 0.2, what="every job final")


def _starts(setup: Setup, job_id: str, step: str) -> list[int]:
    return [run["attempt"] for run in step_runs(setup, job_id, step)]


@pytest.mark.slow
@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_a_live_step_runs_once_whatever_its_messages_and_progress_say(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    """On Redis, a retry's countdown and prefetched messages are held past a 1 s visibility
    timeout, so restored copies marked `redelivered` arrive while the step runs; the steps
    report the same percent for longer than `ergate_stuck_after` while the sweep runs."""
    redis = {
        "broker_transport_options": {**FAST_REDIS_REDELIVERY, "visibility_timeout": 1},
    }
    setup = make_setup(
        setup_name,
        ergate_stuck_after=1.5,
        ergate_max_step_attempts=2,
        **(redis if setup_name == "redis" else {}),
    )
    setup.ergate.register_workflow(liveness_app.retried)
    setup.ergate.register_workflow(liveness_app.steady)
    with worker_process(setup, "live", concurrency=2, module=MODULE):
        retried = str(setup.ergate.submit_job("live_retry", initial_input_value=1).id)
        steady = [
            str(setup.ergate.submit_job("live_steady", initial_input_value=x).id) for x in range(3)
        ]
        jobs = _finished(setup, [retried, *steady], sweep=True)

    for job in jobs:
        assert job.status is JobStatus.COMPLETED, job.error
        # A job whose message waits may be published again — still QUEUED (a slow worker
        # start), or RUNNING with its claim given back for a retry whose countdown message is
        # late on a loaded machine; a step that holds its claim is never requeued.
        assert all(" republish: " in note for note in job.recoveries), job.recoveries
    assert _starts(setup, retried, "flaky") == [1, 2]  # the failed run and its retry
    assert _starts(setup, retried, "after_flaky") == [1]
    for job_id in steady:
        assert _starts(setup, job_id, "crunch") == [1]


@pytest.mark.slow
@pytest.mark.setup("redis")
def test_a_hung_step_runs_once_until_its_time_limit_and_the_sweep_keeps_running(
    make_setup: Callable[..., Setup],
) -> None:
    """Two slots, as many as `ergate_max_step_attempts`, on the queue beat's sweep goes to:
    the hung step holds one, never a second; the sweep runs in the other and recovers a job
    whose message was lost; `ergate_step_time_limit` ends the hung step."""
    setup = make_setup(
        "redis",
        ergate_stuck_after=1,
        ergate_stuck_check_interval=0.5,
        ergate_max_step_attempts=2,
        ergate_step_time_limit=8,
    )
    setup.ergate.register_workflow(liveness_app.hung)
    setup.ergate.register_workflow(liveness_app.backlog)
    lost = setup.ergate.submit_job("live_backlog", initial_input_value=7)
    wait_until(lambda: setup.app.control.purge(), what="the lost job's message purged")
    beat = setup.celery("beat", "-s", str(setup.tmp_path / "schedule"))
    with worker_process(setup, "hang", concurrency=2, module=MODULE), beat:
        hanging = setup.ergate.submit_job("live_hang", initial_input_value="hang")
        recovered = setup.ergate.wait_for_job(lost.id, timeout=WAIT)
        ended = setup.ergate.wait_for_job(hanging.id, timeout=WAIT)

    assert recovered.status is JobStatus.COMPLETED
    assert "republish: QUEUED" in recovered.recoveries[0]
    assert ended.status is JobStatus.FAILED
    assert ended.error is not None
    assert ended.error.type == "TimeLimitExceeded"
    assert ended.recoveries == []
    assert _starts(setup, str(hanging.id), "hangs") == [1]


@pytest.mark.slow
@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_a_backlog_longer_than_stuck_after_is_not_a_loss(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    """Eight half-second steps behind one slot wait up to 4 s, past a 1 s
    `ergate_stuck_after`, while the sweep runs: each step runs once, no job is WorkerLost."""
    setup = make_setup(setup_name, ergate_stuck_after=1, ergate_max_step_attempts=2)
    setup.ergate.register_workflow(liveness_app.backlog)
    job_ids = [
        str(setup.ergate.submit_job("live_backlog", initial_input_value=x).id) for x in range(8)
    ]
    with worker_process(setup, "backlog", concurrency=1, module=MODULE):

        def swept_to_the_end() -> bool:
            recover_stuck_jobs(setup.ergate)
            return all(setup.ergate.get_job(job_id).is_final for job_id in job_ids)

        wait_until(swept_to_the_end, 120, 0.2, what="the backlog done")

    jobs = [setup.ergate.get_job(job_id) for job_id in job_ids]
    for job in jobs:
        assert job.status is JobStatus.COMPLETED, job.error
        assert _starts(setup, str(job.id), "work") == [1]
        assert all(" republish: QUEUED" in note for note in job.recoveries)
        # Published again after 1, 2, 4, 8 ... s of waiting: no storm.
        assert len(job.recoveries) <= 5, job.recoveries


@pytest.mark.slow
@pytest.mark.setup("rabbitmq_postgres")
def test_a_copy_with_a_time_limit_shorter_than_the_lease_comes_back_once(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    """The worker running a step is killed whole, its lease (12 s) left to expire; RabbitMQ
    redelivers the message at once to another worker, whose copy may watch the lease for
    1.5 s only (three quarters of the step's 2 s soft time limit). It is handed back once, due
    when the lease expires, instead of going round the queue every 1.5 s until then."""
    setup = make_setup(setup_name, ergate_lease_seconds=12)
    setup.ergate.register_workflow(liveness_app.limited)
    job_id = str(setup.ergate.submit_job("live_limited", initial_input_value=1).id)
    with worker_process(setup, "doomed", module=MODULE) as doomed:
        wait_until(lambda: _starts(setup, job_id, "bounded"), WAIT, what="the first run")
        kill_worker(doomed)
    with worker_process(setup, "heir", module=MODULE):
        done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == 2
    assert _starts(setup, job_id, "bounded") == [1, 2]
    received = sum(
        "Task ergate.live_limited.bounded[" in line and "] received" in line
        for log in setup.tmp_path.glob("celery-worker-*.log")
        for line in log.read_text(errors="replace").splitlines()
    )
    # The first delivery, the copy RabbitMQ redelivered, and the copy handed back.
    assert received <= 3, f"the step's message was received {received} times"
