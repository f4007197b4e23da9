"""Outages a job must outlive, each on a server the test starts and stops itself or on
connections of its own, never the shared services:

- the Redis server (broker and backend) restarts in the middle of a job, which completes;
- the result backend down for 30 s while a step ends: its message is not acknowledged and
  dropped but goes back to the queue, and the job continues when the backend returns;
- the broker down for 1 s at a step's end, with worker events on (`-E`): the job goes on;
- the backend down for 1.5 s while a step reports progress: the step carries on;
- PostgreSQL closes the worker's connections between a step's claim and its outcome.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery

from ergate_celery import ErgateCelery, JobStatus

from .apps import fault_app
from .faults import (
    FAST_REDIS_REDELIVERY,
    RedisServer,
    Supervisor,
    final_job,
    step_counts,
    step_runs,
)
from .support import Setup, wait_until


def _private_redis(tmp_path: Path) -> tuple[RedisServer, str]:
    server = RedisServer(tmp_path / "private-redis")
    server.start()
    return server, server.url


def test_redis_restart_mid_job_completes(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis-data")
    url = server.url
    conf: dict[str, Any] = {
        "task_default_queue": f"ergate-test-{uuid.uuid4().hex[:12]}",
        "broker_connection_retry_on_startup": False,
        "result_extended": True,
        "worker_hijack_root_logger": False,
        "ergate_index_name": "ergate-tests",
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": FAST_REDIS_REDELIVERY,
        # Enough after-step tries (0.25 s, 0.5 s, 1 s, ... apart) to outlast the outage.
        "ergate_after_step_attempts": 10,
    }
    app = Celery("test_redis_restart", set_as_current=True)
    app.conf.update(conf)
    setup = Setup("own_redis", app, ErgateCelery(app), conf, tmp_path)
    setup.ergate.register_workflow(fault_app.outage)
    try:
        server.start()
        job = setup.ergate.submit_job("fault_outage", initial_input_value=[])
        job_id = str(job.id)
        gate = tmp_path / "outage-gate"
        with Supervisor(setup, "outage", gate=gate) as supervisor:
            wait_until(lambda: step_runs(setup, job_id, "outage_2"), what="step 3 started")
            # Redis stops while step 3 runs, and step 3 ends while it is down: storing its
            # outcome and publishing step 4 must wait for the server to return.
            server.stop()
            gate.touch()
            time.sleep(1.5)
            server.start()
            done = final_job(setup, job_id, supervisor)
    finally:
        server.stop()
        app.close()
    # kombu 5.7's Redis transport may crash the worker's main process when the connection
    # drops while it holds an unacknowledged message (AttributeError in restore_unacked);
    # the supervisor then started a new worker, as a production supervisor would.
    print(f"worker restarts after the Redis restart: {supervisor.restarts}")
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == [f"outage_{i}" for i in range(5)]
    counts = step_counts(setup, job_id)
    assert set(counts) == {f"outage_{i}" for i in range(5)}
    # Steps before the outage ran once; the one it hit may rerun; the later ones ran once.
    assert (counts["outage_0"], counts["outage_1"]) == (1, 1)
    assert counts["outage_2"] >= 1
    assert (counts["outage_3"], counts["outage_4"]) == (1, 1)


def _worker_log(setup: Setup) -> str:
    return "\n".join(
        path.read_text(errors="replace") for path in sorted(setup.tmp_path.glob("celery-*.log"))
    )


def test_a_30s_backend_outage_at_a_steps_end_requeues_its_message_and_the_job_completes(
    make_setup: Callable[..., Setup], tmp_path: Path
) -> None:
    server, url = _private_redis(tmp_path)
    try:
        # The broker stays up (the shared Redis); only the result backend goes away.
        setup = make_setup("redis", result_backend=url)
        setup.ergate.register_workflow(fault_app.outage)
        job_id = str(setup.ergate.submit_job("fault_outage", initial_input_value=[]).id)
        gate = tmp_path / "outage-gate"
        with Supervisor(setup, "backend", gate=gate) as supervisor:
            wait_until(lambda: step_runs(setup, job_id, "outage_2"), what="step 3 started")
            server.stop()
            gate.touch()  # step 3 ends while the backend is down: its outcome cannot be stored
            time.sleep(30)
            server.start()
            done = final_job(setup, job_id, supervisor)
    finally:
        server.stop()
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == [f"outage_{i}" for i in range(5)]
    counts = step_counts(setup, job_id)
    # The step whose outcome could not be stored ran again (at least once), nothing else did.
    assert (counts["outage_0"], counts["outage_1"]) == (1, 1)
    assert counts["outage_2"] == 2
    assert (counts["outage_3"], counts["outage_4"]) == (1, 1)
    log = _worker_log(setup)
    assert "the message goes back to the queue" in log
    assert supervisor.restarts == 0


def test_a_1s_broker_blip_at_a_steps_end_with_events_on_does_not_strand_the_job(
    make_setup: Callable[..., Setup], tmp_path: Path
) -> None:
    server, url = _private_redis(tmp_path)
    try:
        # The backend stays up (the shared Redis); the broker is a server of this test.
        setup = make_setup(
            "redis",
            broker_url=url,
            broker_transport_options={**FAST_REDIS_REDELIVERY, "polling_interval": 0.2},
        )
        setup.ergate.register_workflow(fault_app.outage)
        jobs = [
            str(setup.ergate.submit_job("fault_outage", initial_input_value=[]).id)
            for _ in range(3)
        ]
        gate = tmp_path / "outage-gate"
        with Supervisor(setup, "blip", gate=gate, concurrency=3, events=True) as supervisor:
            for job_id in jobs:
                wait_until(lambda j=job_id: step_runs(setup, j, "outage_2"), what="step 3 started")
            server.stop()
            gate.touch()  # the steps end: stored, then announced and handed on, broker down
            time.sleep(1)
            server.start()
            done = [final_job(setup, job_id, supervisor) for job_id in jobs]
    finally:
        server.stop()
    print(f"worker restarts after the broker blip: {supervisor.restarts}")
    for job in done:
        assert job.status is JobStatus.COMPLETED, job.error
        assert job.recoveries == []  # no sweep was needed
        assert job.last_return_value == [f"outage_{i}" for i in range(5)]


def test_a_1_5s_backend_blip_while_a_step_reports_progress_does_not_fail_the_job(
    make_setup: Callable[..., Setup], tmp_path: Path
) -> None:
    server, url = _private_redis(tmp_path)
    try:
        setup = make_setup("redis", result_backend=url, ergate_progress_interval=0.05)
        setup.ergate.register_workflow(fault_app.progressing)
        job_id = str(setup.ergate.submit_job("fault_progress", initial_input_value=1).id)
        gate = tmp_path / "progress-gate"
        with Supervisor(setup, "progress", gate=gate) as supervisor:
            wait_until(
                lambda: setup.ergate.get_job(job_id).percent_completed > 0,
                what="progress stored",
            )
            server.stop()
            time.sleep(1.5)  # the step reports progress all along
            server.start()
            gate.touch()
            done = final_job(setup, job_id, supervisor)
    finally:
        server.stop()
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == 4
    assert step_counts(setup, job_id) == {"crunch": 1, "settle": 1}
    assert "Could not store the progress of job" in _worker_log(setup)


# PostgreSQL closes the worker's connections while a step runs (an administrator's
# pg_terminate_backend, a pooler or a failover would): the outcome is still stored, once, on a
# new connection. The SQLAlchemy store pings no connection before each use (no
# `pool_pre_ping`), so this is what shows a dead one is survived.


def _terminate(url: str, application_name: str) -> int:
    """Close every PostgreSQL connection named `application_name`; how many there were."""
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            closed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": application_name},
            ).scalar()
    finally:
        admin.dispose()
    return int(closed or 0)


def test_the_workers_connections_closed_between_claim_and_outcome(
    make_setup: Callable[..., Setup], tmp_path: Path
) -> None:
    # A name of this test's own on every connection of the app (worker and test process),
    # so that only they are closed on the shared server.
    name = f"ergate-fault-{uuid.uuid4().hex[:8]}"
    setup = make_setup(
        "rabbitmq_postgres",
        database_engine_options={"connect_args": {"application_name": name}},
    )
    setup.ergate.register_workflow(fault_app.outage)
    job_id = str(setup.ergate.submit_job("fault_outage", initial_input_value=[]).id)
    gate = tmp_path / "outage-gate"
    with Supervisor(setup, "sqlconn", gate=gate) as supervisor:
        # Step 3 has been claimed and is running: its outcome is not stored yet.
        wait_until(lambda: step_runs(setup, job_id, "outage_2"), what="step 3 started")
        closed = _terminate(str(setup.app.backend.url), name)
        gate.touch()
        done = final_job(setup, job_id, supervisor)
    assert closed >= 1  # the worker's store connection at least
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == [f"outage_{i}" for i in range(5)]
    # Each step ran once: the outcome of step 3 was stored on a new connection, in time.
    assert step_counts(setup, job_id) == {f"outage_{i}": 1 for i in range(5)}
    assert [timing.step for timing in done.timings] == [f"outage_{i}" for i in range(5)]
    # The step's own result went with its outcome.
    summary = setup.app.AsyncResult(f"ergate-step:{job_id}:2")
    assert summary.state == "SUCCESS"
    assert summary.result["status"] == "QUEUED"
    assert supervisor.restarts == 0
