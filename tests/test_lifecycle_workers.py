"""The production holes the one lifecycle closes, each shown with real workers: hard time
limits, steps that kill their worker, duplicates of a running step, lost replies, dead index
entries, deploys that insert or remove steps, and the announcements of every path."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from ergate_celery import ErgateCelery, Job, JobStatus, Workflow, signals
from ergate_celery.scheduling.beat import recover_stuck_jobs, release_due_jobs
from ergate_celery.stores.base import job_document

from .apps import lifecycle_app
from .support import Setup, in_process_worker, wait_until

WAIT = 60

#: Redis hands a dead worker's unacknowledged message back within seconds with these.
FAST_REDIS_REDELIVERY = {
    "visibility_timeout": 5,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}


@contextmanager
def _prefork_worker(setup: Setup, marks: Path) -> Iterator[Popen[bytes]]:
    """A `celery -A tests.apps.lifecycle_app worker` with one prefork child."""
    args = ("worker", "-P", "prefork", "-c", "1", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-Q", setup.conf["task_default_queue"],
            "-n", f"lifecycle-{uuid.uuid4().hex[:6]}@%h", "-l", "INFO")  # fmt: skip
    env = {"ERGATE_LIFECYCLE_MARKS": str(marks)}
    with setup.celery(*args, env=env, module="tests.apps.lifecycle_app") as process:
        yield process


def _lifecycle_setup(make_setup: Callable[..., Setup], name: str) -> Setup:
    extra: dict[str, Any] = {}
    if name == "redis":
        extra["broker_transport_options"] = FAST_REDIS_REDELIVERY
    # A killed worker's step is taken over once its lease expired.
    setup = make_setup(name, ergate_lease_seconds=2, **extra)
    setup.ergate.register_workflow(lifecycle_app.overrun)
    setup.ergate.register_workflow(lifecycle_app.crash)
    return setup


@pytest.mark.slow
@pytest.mark.parametrize("name", ["redis", "rabbitmq_postgres"])
def test_hard_time_limit_fails_the_job_at_once(
    name: str, make_setup: Callable[..., Setup], tmp_path: Path
) -> None:
    setup = _lifecycle_setup(make_setup, name)
    marks = tmp_path / "marks"
    with _prefork_worker(setup, marks):
        job = setup.ergate.submit_job("lifecycle_overrun", initial_input_value=1)
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert (done.error.type, done.error.step) == ("TimeLimitExceeded", "hang")
    assert "time_limit of 2 s" in done.error.message
    assert done.recoveries == []  # failed by the time-limit hook, not by the sweep
    assert len(lifecycle_app.marks(marks)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["redis", "rabbitmq_postgres"])
def test_step_that_kills_its_worker_every_time_is_started_max_attempts_times(
    name: str, make_setup: Callable[..., Setup], tmp_path: Path
) -> None:
    setup = _lifecycle_setup(make_setup, name)
    marks = tmp_path / "marks"
    with _prefork_worker(setup, marks):
        job = setup.ergate.submit_job("lifecycle_crash", initial_input_value=1)
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert (done.error.type, done.error.step) == ("WorkerLost", "explode")
    assert "3 times" in done.error.message
    assert len(lifecycle_app.marks(marks)) == 3


def _gated_workflow(name: str, runs: Counter[str], gate: threading.Event) -> Workflow:
    workflow = Workflow(unique_name=name)

    @workflow.step
    def a(x: int) -> int:
        runs["a"] += 1
        gate.wait(WAIT)
        return x + 1

    @workflow.step
    def b(x: int) -> int:
        runs["b"] += 1
        return x * 2

    return workflow


def test_duplicate_of_a_running_step_does_not_run_it_again(
    setup: Setup, worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ergate_celery")
    runs: Counter[str] = Counter()
    gate = threading.Event()
    setup.ergate.register_workflow(_gated_workflow("dup_running", runs, gate))
    with worker():
        job = setup.ergate.submit_job("dup_running", initial_input_value=5)
        wait_until(
            lambda: setup.ergate.get_job(job.id).status is JobStatus.RUNNING, what="step a runs"
        )
        duplicate = f"dup-{uuid.uuid4()}"
        setup.app.send_task("ergate.dup_running.a", args=[job_document(job)], task_id=duplicate)
        summary = AsyncResult(duplicate, app=setup.app).get(timeout=WAIT)
        gate.set()
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert summary["dropped"] is True
    assert runs == {"a": 1, "b": 1}
    assert (done.status, done.last_return_value) == (JobStatus.COMPLETED, 12)
    dropped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("a duplicate: the step is running elsewhere" in m for m in dropped), dropped


class _LostReply:
    """Wraps a real store: the first write of a step's outcome is stored, and then its reply
    is lost (the caller sees a connection error), as when the network drops after the write."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def update(self, job_id: str, change: Any, **options: Any) -> Any:
        updated = self.store.update(job_id, change, **options)
        written = updated.after
        if self.lost == 0 and written is not None and written.finished_by is not None:
            self.lost += 1
            raise ConnectionError("the reply to the outcome's write was lost")
        return updated


def test_lost_reply_to_the_outcome_still_publishes_the_next_step_once(
    setup: Setup, worker: Any
) -> None:
    runs: Counter[str] = Counter()
    gate = threading.Event()
    gate.set()
    setup.ergate.register_workflow(_gated_workflow("lost_reply", runs, gate))
    lossy = _LostReply(setup.ergate.store)
    setup.ergate.runtime.store = lossy
    published: Counter[str] = Counter()
    sent: Counter[str] = Counter()

    def count(sender: str | None = None, **kwargs: Any) -> None:
        published[str(sender)] += 1

    def count_sent(sender: str | None = None, **kwargs: Any) -> None:
        sent[str(sender)] += 1

    from celery.signals import after_task_publish, before_task_publish

    before_task_publish.connect(count, weak=False)
    after_task_publish.connect(count_sent, weak=False)
    try:
        with worker():
            job = setup.ergate.submit_job("lost_reply", initial_input_value=5)
            done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    finally:
        before_task_publish.disconnect(count)
        after_task_publish.disconnect(count_sent)
    assert lossy.lost == 1
    assert (done.status, done.last_return_value) == (JobStatus.COMPLETED, 12)
    assert runs == {"a": 1, "b": 1}
    assert published["ergate.lost_reply.b"] == 1
    assert sent["ergate.lost_reply.b"] == 1
    assert done.recoveries == []  # handed on at once, not by the sweep


@pytest.fixture
def announced() -> Iterator[list[tuple[str, str, str, str]]]:
    """Every lifecycle signal sent in this process, as (signal, sender, job id, status)."""
    seen: list[tuple[str, str, str, str]] = []
    names = ("job_started", "step_started", "step_completed", "job_completed", "job_failed",
             "job_aborted", "job_cancelled")  # fmt: skip
    receivers = {}
    for signal_name in names:

        def receive(sender: str, job: Job, _name: str = signal_name, **kwargs: Any) -> None:
            seen.append((_name, sender, str(job.id), job.status.name))

        receivers[signal_name] = receive
        getattr(signals, signal_name).connect(receive, weak=False)
    yield seen
    for signal_name, receiver in receivers.items():
        getattr(signals, signal_name).disconnect(receiver)


def _plain(setup: Setup, name: str = "plain") -> Workflow:
    workflow = Workflow(unique_name=name)

    @workflow.step
    def only(x: int) -> int:
        return x + 1

    setup.ergate.register_workflow(workflow)
    return workflow


def test_cancel_of_a_queued_or_scheduled_job_is_announced(
    setup: Setup, announced: list[tuple[str, str, str, str]]
) -> None:
    _plain(setup)
    queued = setup.ergate.submit_job("plain", initial_input_value=1)
    later = datetime.now(UTC) + timedelta(days=1)
    scheduled = setup.ergate.submit_job("plain", initial_input_value=1, requested_start_time=later)
    setup.ergate.cancel_job(queued.id)
    setup.ergate.cancel_job(scheduled.id)
    assert announced == [
        ("job_cancelled", "ergate.cancel_job", queued.id, "CANCELLED"),
        ("job_cancelled", "ergate.cancel_job", scheduled.id, "CANCELLED"),
    ]


def test_deadline_expiring_at_release_is_announced(
    setup: Setup, announced: list[tuple[str, str, str, str]]
) -> None:
    _plain(setup)
    start = datetime.now(UTC) + timedelta(hours=1)
    job = setup.ergate.submit_job(
        "plain", initial_input_value=1, requested_start_time=start,
        deadline=start + timedelta(minutes=1),
    )  # fmt: skip
    assert release_due_jobs(setup.ergate, start + timedelta(minutes=2)) == 0
    failed = setup.ergate.get_job(job.id)
    assert failed.error is not None
    assert (failed.status, failed.error.type) == (JobStatus.FAILED, "DeadlineExpired")
    assert announced == [("job_failed", "ergate.release_scheduled_jobs", job.id, "FAILED")]


def test_sweep_failing_a_stuck_job_is_announced(
    make_setup: Callable[..., Setup], setup_name: str,
    announced: list[tuple[str, str, str, str]],
) -> None:  # fmt: skip
    setup = make_setup(setup_name, ergate_stuck_action="fail")
    _plain(setup)
    job = setup.ergate.submit_job("plain", initial_input_value=1)  # no worker: it stays QUEUED
    assert recover_stuck_jobs(setup.ergate, datetime.now(UTC) + timedelta(hours=2)) == 1
    failed = setup.ergate.get_job(job.id)
    assert failed.error is not None
    assert (failed.status, failed.error.type) == (JobStatus.FAILED, "StuckJob")
    assert announced == [("job_failed", "ergate.recover_stuck_jobs", job.id, "FAILED")]


def test_release_drops_dead_index_entries_and_releases_the_jobs_behind_them(
    make_setup: Callable[..., Setup], setup_name: str
) -> None:
    setup = make_setup(setup_name, ergate_release_batch_size=3)
    _plain(setup)
    start = datetime.now(UTC) + timedelta(hours=1)
    dead = [
        setup.ergate.submit_job("plain", initial_input_value=i, requested_start_time=start)
        for i in range(3)
    ]
    alive = [
        setup.ergate.submit_job(
            "plain", initial_input_value=i, requested_start_time=start + timedelta(seconds=1)
        )
        for i in range(2)
    ]
    for job in dead:  # what a user's forget() or a manual cleanup does
        AsyncResult(job.id, app=setup.app).forget()
    assert release_due_jobs(setup.ergate, start + timedelta(seconds=2)) == 2
    assert [setup.ergate.get_job(j.id).status for j in alive] == [JobStatus.QUEUED] * 2
    assert setup.ergate.store.due(start + timedelta(days=1), 10) == []


def test_sweep_drops_dead_index_entries(setup: Setup) -> None:
    _plain(setup)
    job = setup.ergate.submit_job("plain", initial_input_value=1)
    AsyncResult(job.id, app=setup.app).forget()
    later = datetime.now(UTC) + timedelta(hours=2)
    assert recover_stuck_jobs(setup.ergate, later) == 0
    assert setup.ergate.store.stale(later, 10) == []


@contextmanager
def _deployed(setup: Setup, workflow: Workflow, **conf: Any) -> Iterator[ErgateCelery]:
    """Another process's app after a deploy: the same services (and `conf`), the new
    definition."""
    app = Celery(f"deployed_{setup.name}")
    app.conf.update(setup.conf, **conf)
    ergate = ErgateCelery(app)
    ergate.register_workflow(workflow)
    try:
        yield ergate
    finally:
        app.close()


def _versions(setup: Setup) -> tuple[Workflow, Workflow]:
    """The same workflow before and after a deploy that inserted `audit` before `b`; step `b`
    goes to a queue of its own so that its message waits across the deploy."""
    later = f"{setup.conf['task_default_queue']}-special"
    v1, v2 = Workflow(unique_name="deployed"), Workflow(unique_name="deployed")

    def a(x: int) -> int:
        return x + 1

    def audit(x: int) -> int:
        return x * 100

    def b(x: int) -> int:
        return x + 10

    v1.step(a)
    v1.step(queue=later)(b)
    v2.step(a)
    v2.step(audit)
    v2.step(queue=later)(b)
    return v1, v2


@pytest.mark.parametrize("republish", ["queued_message", "sweep"])
def test_deploy_inserting_a_step_continues_at_the_named_step(setup: Setup, republish: str) -> None:
    v1, v2 = _versions(setup)
    setup.ergate.register_workflow(v1)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("deployed", initial_input_value=1)
        wait_until(lambda: setup.ergate.get_job(job.id).steps_completed == 1, what="step a is done")
    waiting = setup.ergate.get_job(job.id)
    assert (waiting.status, waiting.current_step_name) == (JobStatus.QUEUED, "b")
    later = f"{setup.conf['task_default_queue']}-special"
    if republish == "sweep":  # the message is lost; the sweep republishes by name
        with setup.app.connection_for_write() as conn:
            wait_until(
                lambda: conn.default_channel.queue_purge(later), what="the message was purged"
            )
    queues = [setup.conf["task_default_queue"], later]
    with _deployed(setup, v2) as deployed, in_process_worker(deployed.app, queues=queues):
        if republish == "sweep":
            assert recover_stuck_jobs(deployed, datetime.now(UTC) + timedelta(hours=2))
        done = deployed.wait_for_job(job.id, timeout=WAIT)
    assert (done.status, done.last_return_value) == (JobStatus.COMPLETED, 12)
    assert done.workflow_version == v2.version != v1.version
    assert [t.step for t in done.timings] == ["a", "b"]


def test_deploy_removing_the_current_step_fails_the_job(setup: Setup) -> None:
    v1, _ = _versions(setup)
    setup.ergate.register_workflow(v1)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("deployed", initial_input_value=1)
        wait_until(lambda: setup.ergate.get_job(job.id).steps_completed == 1, what="step a is done")
    v3 = Workflow(unique_name="deployed")
    v3.step(v1[0].callable)
    queues = [setup.conf["task_default_queue"], f"{setup.conf['task_default_queue']}-special"]
    # No worker has step b any more: after ergate_unknown_step_wait of handing its message
    # back for one that does, the job fails.
    deployed_v3 = _deployed(setup, v3, ergate_unknown_step_wait=0.5)
    with deployed_v3 as deployed, in_process_worker(deployed.app, queues=queues):
        done = deployed.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.type == "UnknownStep"
    assert "ergate.deployed.b" in done.error.message
    assert "workflow 'deployed' has no such step here" in done.error.message


def test_a_message_for_another_workflows_step_is_never_run(setup: Setup, worker: Any) -> None:
    runs: Counter[str] = Counter()
    gate = threading.Event()
    setup.ergate.register_workflow(_gated_workflow("mine", runs, gate))
    _plain(setup, "other")
    later = datetime.now(UTC) + timedelta(days=1)
    other = setup.ergate.submit_job("other", initial_input_value=1, requested_start_time=later)
    gate.set()
    with worker():
        forged = job_document(other.model_copy(update={"status": JobStatus.QUEUED}))
        sent = setup.app.send_task("ergate.mine.a", args=[forged])
        summary = AsyncResult(sent.id, app=setup.app).get(timeout=WAIT)
    assert summary["dropped"] is True
    assert runs == {}
    assert setup.ergate.get_job(other.id).status is JobStatus.SCHEDULED


def test_workflow_version_is_recorded_at_submit(setup: Setup) -> None:
    workflow = _plain(setup)
    job = setup.ergate.submit_job("plain", initial_input_value=1)
    assert (job.workflow_version, job.current_step_name) == (workflow.version, "only")
    assert isinstance(ErgateCelery.of(setup.app).get_job(job.id).workflow_version, str)
