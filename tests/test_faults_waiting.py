"""Fault tests of waiting steps, with `celery worker` and `celery beat` processes: a worker
killed right after its step raised `WaitForSignal` (before or after the wait is stored), and
beat down while a sleep ends."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import Popen

import pytest

from ergate_celery import JobStatus

from .apps import waiting_app
from .faults import FAST_REDIS_REDELIVERY
from .support import Setup, wait_until

WAIT = 60
MODULE = "tests.apps.waiting_app"
#: Beat's release interval in the beat-down test, and how long beat stays down while a sleep
#: ends: 20 intervals, as many as the 10 s at 0.5 s it was (a minute or more in production
#: terms, shortened), and past the workers' overdue grace of max(5 intervals, 2 s).
BEAT_INTERVAL = 0.2
BEAT_DOWN = 20 * BEAT_INTERVAL


@contextmanager
def _worker(setup: Setup, env: dict[str, str] | None = None) -> Iterator[Popen[bytes]]:
    args = ["worker", "-P", "prefork", "-c", "1", "--without-gossip", "--without-mingle"]
    args += ["--without-heartbeat", "-Q", setup.conf["task_default_queue"]]
    args += ["-n", f"waiting-{uuid.uuid4().hex[:6]}@%h", "-l", "INFO"]
    with setup.celery(*args, env=env, module=MODULE) as process:
        yield process


def _beat(setup: Setup) -> Iterator[Popen[bytes]]:
    schedule = setup.tmp_path / f"beat-{uuid.uuid4().hex[:6]}"
    return setup.celery("beat", "-s", str(schedule), module=MODULE)  # type: ignore[return-value]


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
    setup = make_setup(setup_name, **extra)
    for workflow in waiting_app.WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    flag, marks = setup.tmp_path / "killed", setup.tmp_path / "marks"
    env = {"ERGATE_WAIT_KILL": str(flag), "ERGATE_WAIT_KILL_AT": kill_at}
    env["ERGATE_WAIT_MARKS"] = str(marks)
    job_id = str(setup.ergate.submit_job("approval", initial_input_value={"n": 1}).id)
    with _worker(setup, env):
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


def test_beat_down_while_a_sleep_ends_releases_it_once_when_beat_is_back(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name, ergate_schedule_interval=BEAT_INTERVAL)
    for workflow in waiting_app.WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    with _worker(setup):
        with _beat(setup):
            job = setup.ergate.submit_job("napping", initial_input_value={"seconds": 2})
            job_id = str(job.id)
            waiting = wait_until(
                lambda: (found := setup.ergate.get_job(job_id)).wait is not None and found,
                WAIT,
                what="the job sleeps",
            )
        until = waiting.wait.until
        # Beat is down: the sleep ends, and nothing releases the job.
        while datetime.now(UTC) < until + timedelta(seconds=BEAT_DOWN):
            assert setup.ergate.get_job(job_id).status is JobStatus.SCHEDULED
            time.sleep(BEAT_INTERVAL)
        back = time.time()
        with _beat(setup):
            done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value["woke_at"] >= back
    assert [timing.step for timing in done.timings] == ["nap", "woke"]
