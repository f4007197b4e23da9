"""PostgreSQL closes the worker's connections while a step runs, between its claim and its
outcome (an administrator's pg_terminate_backend, a pooler or a failover would): the outcome
is still stored, once, on a new connection, and the job completes. The SQLAlchemy store pings
no connection before each use (no `pool_pre_ping`), so this is what shows a dead one is
survived."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from ergate_celery import Job, JobStatus

from .apps import fault_app
from .faults import _runs, _step_counts, _Supervisor
from .support import Setup, wait_until


def _final(setup: Setup, job_id: str) -> Job | None:
    job = setup.ergate.get_job(job_id)
    return job if job.is_final else None


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
    supervisor = _Supervisor(setup, "sqlconn", env={"ERGATE_FAULT_OUTAGE_GATE": str(gate)})
    try:
        supervisor.ensure()
        # Step 3 has been claimed and is running: its outcome is not stored yet.
        wait_until(lambda: _runs(setup, job_id, "outage_2"), what="step 3 started")
        closed = _terminate(str(setup.app.backend.url), name)
        gate.touch()
        done = wait_until(lambda: _final(setup, job_id), 60, 0.2, what=f"job {job_id} final")
    finally:
        supervisor.close()
    assert closed >= 1  # the worker's store connection at least
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == [f"outage_{i}" for i in range(5)]
    # Each step ran once: the outcome of step 3 was stored on a new connection, in time.
    assert _step_counts(setup, job_id) == {f"outage_{i}": 1 for i in range(5)}
    assert [timing.step for timing in done.timings] == [f"outage_{i}" for i in range(5)]
    # The step's own result went with its outcome.
    summary = setup.app.AsyncResult(f"ergate-step:{job_id}:2")
    assert summary.state == "SUCCESS"
    assert summary.result["status"] == "QUEUED"
    assert supervisor.restarts == 0
