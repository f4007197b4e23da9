"""Beat sends the release and sweep tasks only when the job index holds due work, and a sleep
that ended while beat was down is released once when it is back."""

import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from ergate_celery import JobStatus, Workflow
from ergate_celery.scheduling.release import RELEASE_TASK
from ergate_celery.scheduling.sweep import RECOVER_TASK

from .apps import fault_app, waiting_app
from .faults import step_counts, worker_process
from .support import Setup, in_process_worker, wait_until

WAIT = 60
INTERVAL = 0.5
#: Beat's release interval in the beat-down test, and how long beat stays down while a sleep
#: ends: 20 intervals, as many as the 10 s at 0.5 s it was (a minute or more in production
#: terms, shortened), and past the workers' overdue grace of max(5 intervals, 2 s).
BEAT_INTERVAL = 0.2
BEAT_DOWN = 20 * BEAT_INTERVAL
WAITING_APP = "tests.apps.waiting_app"


def _started_workflow(name: str, started: dict[str, float]) -> Workflow:
    workflow = Workflow(unique_name=name)
    lock = threading.Lock()

    @workflow.step
    def record(x: Any) -> Any:
        with lock:
            started.setdefault(str(x), time.time())
        return x

    return workflow


def _sent(log_folder: Path, task: str) -> int:
    """How many times the beat logs in `log_folder` say they sent `task`."""
    return sum(
        log.read_text(errors="replace").count(f"Sending due task {task}")
        for log in log_folder.glob("celery-beat-*.log")
    )


def test_idle_beat_sends_no_task_and_a_due_job_is_still_released(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(
        setup_name, ergate_schedule_interval=INTERVAL, ergate_stuck_check_interval=INTERVAL
    )
    started: dict[str, float] = {}
    setup.ergate.register_workflow(_started_workflow("idle", started))
    # Work in both indexes, none of it due: a job next month, and one queued a moment ago.
    setup.ergate.submit_job(
        "idle", initial_input_value="later", requested_start_time=datetime.now(UTC) + timedelta(30)
    )
    setup.ergate.submit_job("idle", initial_input_value="queued")  # no worker yet
    beat_args = ("beat", "-l", "INFO", "-s", str(setup.tmp_path / "sched"))
    with setup.celery(*beat_args):
        time.sleep(8 * INTERVAL)
        assert _sent(setup.tmp_path, RELEASE_TASK) == 0
        assert _sent(setup.tmp_path, RECOVER_TASK) == 0
        with in_process_worker(setup.app):
            due = datetime.now(UTC) + timedelta(seconds=1)
            job = setup.ergate.submit_job(
                "idle", initial_input_value="due", requested_start_time=due
            )
            done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
            time.sleep(4 * INTERVAL)  # once released, beat goes quiet again
    assert done.status is JobStatus.COMPLETED
    assert started["due"] >= due.timestamp()
    # One release run for the due job (two if beat looked while the worker was releasing it).
    assert 1 <= _sent(setup.tmp_path, RELEASE_TASK) <= 2
    assert _sent(setup.tmp_path, RECOVER_TASK) == 0


@pytest.mark.setup("redis")
def test_release_lateness_with_an_idle_beat(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    """Prints how late jobs start after their time (not asserted: this machine is shared)."""
    setup = make_setup(setup_name, ergate_schedule_interval=INTERVAL)
    started: dict[str, float] = {}
    setup.ergate.register_workflow(_started_workflow("late", started))
    beat_args = ("beat", "-s", str(setup.tmp_path / "sched"))
    due_at: dict[str, float] = {}
    with in_process_worker(setup.app), setup.celery(*beat_args):
        time.sleep(2)  # beat up
        now = datetime.now(UTC)
        for i in range(30):
            due = now + timedelta(seconds=1 + random.uniform(0, 8))
            due_at[f"j{i}"] = due.timestamp()
            setup.ergate.submit_job("late", initial_input_value=f"j{i}", requested_start_time=due)
        wait_until(lambda: len(started) == len(due_at), timeout=WAIT, what="all jobs started")
    lateness = sorted(started[name] - due_at[name] for name in due_at)
    assert min(lateness) >= 0
    p99 = lateness[min(len(lateness) - 1, int(0.99 * len(lateness)))]
    print(
        f"\nrelease lateness, interval {INTERVAL} s, {len(lateness)} jobs: "
        f"p50 {statistics.median(lateness):.3f} s, p99 {p99:.3f} s, max {lateness[-1]:.3f} s"
    )


def _beat(setup: Setup) -> Iterator[Popen[bytes]]:
    schedule = setup.tmp_path / f"beat-{uuid.uuid4().hex[:6]}"
    return setup.celery("beat", "-s", str(schedule), module=WAITING_APP)  # type: ignore[return-value]


def test_beat_down_while_a_sleep_ends_releases_it_once_when_beat_is_back(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name, ergate_schedule_interval=BEAT_INTERVAL)
    for workflow in waiting_app.WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    with worker_process(setup, "waiting", module=WAITING_APP):
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


@pytest.mark.slow
@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_a_release_killed_between_its_write_and_its_publish_is_finished_by_the_next(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    """The worker running beat's release dies after writing a due job QUEUED and before
    publishing its step: a later release run publishes it, long before the sweep would
    (`ergate_stuck_after` is far beyond this test)."""
    setup = make_setup(setup_name, ergate_schedule_interval=INTERVAL, ergate_stuck_after=3600)
    setup.ergate.register_workflow(fault_app.window)
    killed = setup.tmp_path / "killed-in-release"
    env = {"ERGATE_FAULT_KILL_IN_RELEASE": str(killed)}
    schedule = setup.tmp_path / "beat-schedule"
    beat = setup.celery("beat", "-s", str(schedule), module="tests.apps.fault_app")
    with beat, worker_process(setup, "release", concurrency=1, env=env) as worker:
        # Due after the first write of this process to the store (PostgreSQL: its tables).
        due = setup.ergate.store.clock() + timedelta(seconds=2)
        job = setup.ergate.submit_job(
            "fault_window", initial_input_value=1, requested_start_time=due
        )
        assert job.status is JobStatus.SCHEDULED
        job_id = str(job.id)
        wait_until(killed.exists, WAIT, what="the release run was killed")
        left = setup.ergate.get_job(job_id)
        assert left.status is JobStatus.QUEUED
        assert (left.queued_by or "").startswith("release ")
        assert worker.poll() is None, "only the pool process died"
        done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == 4
    assert done.queued_by is None
    assert step_counts(setup, job_id) == {"commit": 1, "publish": 1, "done": 1}
