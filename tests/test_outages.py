"""Outages a job must outlive (issue 12, points 3, 4 and 5), each on a Redis server the test
starts and stops itself, never the shared services.

- the result backend down for 30 s while a step ends: its message is not acknowledged and
  dropped but goes back to the queue, and the job continues when the backend returns;
- the broker down for 1 s at a step's end, with worker events on (`-E`): the job goes on;
- the backend down for 1.5 s while a step reports progress: the step carries on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ergate_celery import Job, JobStatus

from .apps import fault_app
from .faults import FAST_REDIS_REDELIVERY, _runs, _step_counts, _Supervisor
from .support import Setup, wait_until
from .test_faults_outages import _free_port, _redis_binary, _RedisServer


def _private_redis(tmp_path: Path) -> tuple[_RedisServer, str]:
    server = _RedisServer(_redis_binary(), _free_port(), tmp_path / "private-redis")
    server.start()
    return server, f"redis://127.0.0.1:{server.port}/0"


def _final(setup: Setup, job_id: str, supervisor: _Supervisor) -> Job:
    def final() -> Job | None:
        supervisor.ensure()
        try:
            job = setup.ergate.get_job(job_id)
        except Exception:  # the server is still coming back
            return None
        return job if job.is_final else None

    return wait_until(final, 120, 0.2, what=f"job {job_id} final")


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
        supervisor = _Supervisor(setup, "backend", env={"ERGATE_FAULT_OUTAGE_GATE": str(gate)})
        try:
            supervisor.ensure()
            wait_until(lambda: _runs(setup, job_id, "outage_2"), what="step 3 started")
            server.stop()
            gate.touch()  # step 3 ends while the backend is down: its outcome cannot be stored
            time.sleep(30)
            server.start()
            done = _final(setup, job_id, supervisor)
        finally:
            supervisor.close()
    finally:
        server.stop()
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == [f"outage_{i}" for i in range(5)]
    counts = _step_counts(setup, job_id)
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
        supervisor = _Supervisor(
            setup,
            "blip",
            concurrency=3,
            env={"ERGATE_FAULT_OUTAGE_GATE": str(gate)},
            events=True,
        )
        try:
            supervisor.ensure()
            for job_id in jobs:
                wait_until(lambda j=job_id: _runs(setup, j, "outage_2"), what="step 3 started")
            server.stop()
            gate.touch()  # the steps end: stored, then announced and handed on, broker down
            time.sleep(1)
            server.start()
            done = [_final(setup, job_id, supervisor) for job_id in jobs]
        finally:
            supervisor.close()
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
        supervisor = _Supervisor(setup, "progress", env={"ERGATE_FAULT_OUTAGE_GATE": str(gate)})
        try:
            supervisor.ensure()
            wait_until(
                lambda: setup.ergate.get_job(job_id).percent_completed > 0,
                what="progress stored",
            )
            server.stop()
            time.sleep(1.5)  # the step reports progress all along
            server.start()
            gate.touch()
            done = _final(setup, job_id, supervisor)
        finally:
            supervisor.close()
    finally:
        server.stop()
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == 4
    assert _step_counts(setup, job_id) == {"crunch": 1, "settle": 1}
    assert "Could not store the progress of job" in _worker_log(setup)
