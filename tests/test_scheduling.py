"""Scheduled jobs released by a real `celery beat`, cancellation, periodic jobs, priority,
deadlines, and unfinished jobs that never expire."""

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from celery.signals import before_task_publish

from ergate_celery import InvalidInputError, JobNotFoundError, JobStatus, Workflow
from ergate_celery.scheduling import release
from ergate_celery.scheduling.beat import release_due_jobs

from .support import Setup, in_process_worker, wait_until
from .workflows import echo_workflow

WAIT = 60
FAST_BEAT = {"ergate_schedule_interval": 0.5}


def _recording_workflow(name: str, runs: Counter[str], started: dict[str, float]) -> Workflow:
    workflow = Workflow(unique_name=name)
    lock = threading.Lock()

    @workflow.step
    def record(x: Any) -> Any:
        with lock:
            runs[str(x)] += 1
            started.setdefault(str(x), time.time())
        return x

    return workflow


def test_scheduled_job_runs_after_its_time_and_not_before(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name, **FAST_BEAT)
    runs: Counter[str] = Counter()
    started: dict[str, float] = {}
    setup.ergate.register_workflow(_recording_workflow("later", runs, started))
    due = datetime.now(UTC) + timedelta(seconds=3)
    job = setup.ergate.submit_job("later", initial_input_value="j1", requested_start_time=due)
    assert job.status is JobStatus.SCHEDULED
    assert job.requested_start_time == due
    with in_process_worker(setup.app), setup.celery("beat", "-s", str(setup.tmp_path / "sched")):
        while datetime.now(UTC) < due - timedelta(seconds=0.5):
            assert setup.ergate.get_job(job.id).status is JobStatus.SCHEDULED
            time.sleep(0.1)
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert runs == {"j1": 1}
    assert started["j1"] >= due.timestamp()


@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_two_beats_release_each_due_job_exactly_once(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name, ergate_schedule_interval=0.2, ergate_release_batch_size=25)
    runs: Counter[str] = Counter()
    setup.ergate.register_workflow(_recording_workflow("batch", runs, {}))
    due = datetime.now(UTC) + timedelta(seconds=5)
    jobs = [
        setup.ergate.submit_job("batch", initial_input_value=f"job-{i}", requested_start_time=due)
        for i in range(200)
    ]
    assert {job.status for job in jobs} == {JobStatus.SCHEDULED}
    ids = [job.id for job in jobs]
    beat_a = setup.celery("beat", "-s", str(setup.tmp_path / "sched-a"))
    beat_b = setup.celery("beat", "-s", str(setup.tmp_path / "sched-b"))
    with in_process_worker(setup.app, concurrency=4), beat_a, beat_b:
        for job_id in ids:
            assert setup.ergate.wait_for_job(job_id, timeout=WAIT).status is JobStatus.COMPLETED
    assert len(runs) == 200
    assert set(runs.values()) == {1}, [k for k, v in runs.items() if v != 1]


def test_release_runs_race_and_release_each_job_once(setup: Setup) -> None:
    runs: Counter[str] = Counter()
    setup.ergate.register_workflow(_recording_workflow("race", runs, {}))
    due = datetime.now(UTC) + timedelta(seconds=30)
    for i in range(40):
        job = setup.ergate.submit_job("race", initial_input_value=i, requested_start_time=due)
        assert job.status is JobStatus.SCHEDULED
    assert release_due_jobs(setup.ergate) == 0
    now = due + timedelta(seconds=1)
    released: list[int] = []
    threads = [
        threading.Thread(target=lambda: released.append(release_due_jobs(setup.ergate, now)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(released) == 40
    assert setup.ergate.store.due(now, 100) == []


def test_release_cost_follows_due_jobs_not_all_scheduled(setup: Setup) -> None:
    class CountingStore:
        def __init__(self, inner: Any) -> None:
            self.inner, self.updates = inner, 0

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def update(self, job_id: str, change: Any, **options: Any) -> Any:
            self.updates += 1
            return self.inner.update(job_id, change, **options)

    setup.ergate.register_workflow(_recording_workflow("future", Counter(), {}))
    far = datetime.now(UTC) + timedelta(days=30)
    for i in range(300):
        setup.ergate.submit_job("future", initial_input_value=i, requested_start_time=far)
    near = datetime.now(UTC) + timedelta(days=1)
    for i in range(3):
        setup.ergate.submit_job("future", initial_input_value=i, requested_start_time=near)
    counting = CountingStore(setup.ergate.store)
    rt = replace(setup.ergate.runtime, store=counting)
    assert release.release_due_jobs(rt, near + timedelta(seconds=1)) == 3
    # The 300 future jobs were never read: two writes for each due job, its release and,
    # once its step is published, clearing the release's mark.
    assert counting.updates == 2 * 3


def test_cancelled_scheduled_job_is_never_released(setup: Setup) -> None:
    runs: Counter[str] = Counter()
    setup.ergate.register_workflow(_recording_workflow("cancel-scheduled", runs, {}))
    due = datetime.now(UTC) + timedelta(hours=1)
    job = setup.ergate.submit_job(
        "cancel-scheduled", initial_input_value=1, requested_start_time=due
    )
    assert setup.ergate.cancel_job(job.id).status is JobStatus.CANCELLED
    later = due + timedelta(seconds=1)
    assert release_due_jobs(setup.ergate, later) == 0
    assert setup.ergate.get_job(job.id).status is JobStatus.CANCELLED
    assert setup.ergate.store.due(later, 10) == []


def test_unfinished_jobs_survive_result_expiry_and_cleanup(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name, result_expires=1)
    setup.ergate.register_workflow(_recording_workflow("expiry", Counter(), {}))
    scheduled = setup.ergate.submit_job(
        "expiry",
        initial_input_value="s",
        requested_start_time=datetime.now(UTC) + timedelta(days=30),
    )
    with in_process_worker(setup.app):
        finished = setup.ergate.submit_job("expiry", initial_input_value="f")
        setup.ergate.wait_for_job(finished.id, timeout=WAIT)
    queued = setup.ergate.submit_job("expiry", initial_input_value="q")  # no worker now
    time.sleep(2.5)
    setup.app.tasks["celery.backend_cleanup"]()
    assert setup.ergate.get_job(scheduled.id).status is JobStatus.SCHEDULED
    assert setup.ergate.get_job(queued.id).status is JobStatus.QUEUED
    with pytest.raises(JobNotFoundError):
        setup.ergate.get_job(finished.id)


def test_periodic_workflow_fires_repeatedly_each_firing_its_own_job(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name)
    seen: list[str] = []

    def on_started(sender: Any, job: Any, **kwargs: Any) -> None:
        seen.append(str(job.id))

    from ergate_celery.signals import job_started

    from .apps.beat_app import tick

    job_started.connect(on_started, weak=False)
    try:
        setup.ergate.register_workflow(tick)
        beat = setup.celery(
            "beat", "-s", str(setup.tmp_path / "sched"), env={"ERGATE_TEST_PERIODIC": "1.0"}
        )
        with in_process_worker(setup.app), beat:
            wait_until(lambda: len(set(seen)) >= 3)
    finally:
        job_started.disconnect(on_started)
    assert len(set(seen)) == len(seen)  # one job per firing, each started once


def test_periodic_entry_needs_a_known_workflow(setup: Setup) -> None:
    from ergate_celery import UnknownWorkflowError

    with pytest.raises(UnknownWorkflowError):
        setup.ergate.add_periodic_job("missing", 60)
    from .apps.beat_app import tick

    setup.ergate.register_workflow(tick)
    with pytest.raises(InvalidInputError, match="input type"):
        setup.ergate.add_periodic_job("tick", 60, initial_input_value="not an int")
    assert "tick" not in setup.app.conf.beat_schedule


def test_priority_applies_to_every_step_message(setup: Setup, worker: Any) -> None:
    workflow = echo_workflow("urgent", "first", "second")
    priorities: dict[str, Any] = {}

    def capture(
        sender: str, headers: dict[str, Any], properties: dict[str, Any], **kw: Any
    ) -> None:
        if sender.startswith("ergate.urgent."):
            priorities[sender] = properties.get("priority")

    setup.ergate.register_workflow(workflow)
    before_task_publish.connect(capture, weak=False)
    try:
        with worker():
            job = setup.ergate.submit_job("urgent", initial_input_value=1, priority=7)
            setup.ergate.wait_for_job(job.id, timeout=WAIT)
    finally:
        before_task_publish.disconnect(capture)
    assert priorities == {"ergate.urgent.first": 7, "ergate.urgent.second": 7}


def test_job_not_started_by_its_deadline_fails_without_running(setup: Setup, worker: Any) -> None:
    runs: Counter[str] = Counter()
    setup.ergate.register_workflow(_recording_workflow("deadline", runs, {}))
    now = datetime.now(UTC)
    queued = setup.ergate.submit_job(
        "deadline", initial_input_value="q", deadline=now + timedelta(milliseconds=200)
    )
    start = now + timedelta(hours=2)
    scheduled = setup.ergate.submit_job(
        "deadline",
        initial_input_value="s",
        requested_start_time=start,
        deadline=now + timedelta(hours=1),
    )
    assert release_due_jobs(setup.ergate, start + timedelta(seconds=1)) == 0
    time.sleep(0.3)
    with worker():
        done = setup.ergate.wait_for_job(queued.id, timeout=WAIT)
    for job in (done, setup.ergate.get_job(scheduled.id)):
        assert job.status is JobStatus.FAILED
        assert job.error is not None
        assert job.error.type == "DeadlineExpired"
    assert runs == {}


@pytest.mark.setup("redis")
def test_start_times_are_read_as_utc(setup: Setup) -> None:
    setup.ergate.register_workflow(_recording_workflow("tz", Counter(), {}))
    naive = datetime(2099, 1, 1, 12, 0)
    tokyo = datetime(2099, 1, 1, 21, 0, tzinfo=timezone(timedelta(hours=9)))
    a = setup.ergate.submit_job("tz", initial_input_value=1, requested_start_time=naive)
    b = setup.ergate.submit_job("tz", initial_input_value=2, requested_start_time=tokyo)
    expected = datetime(2099, 1, 1, 12, 0, tzinfo=UTC)
    assert a.requested_start_time == b.requested_start_time == expected
    assert setup.ergate.get_job(a.id).requested_start_time == expected
    with pytest.raises(InvalidInputError, match="priority"):
        setup.ergate.submit_job("tz", initial_input_value=1, priority=300)
    with pytest.raises(InvalidInputError, match="deadline"):
        setup.ergate.submit_job("tz", initial_input_value=1, deadline="tomorrow")  # type: ignore[arg-type]
