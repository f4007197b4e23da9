"""Fault tests: killed workers, duplicated messages, a Redis restart, purged queues, a soak.

Workers run as real `celery -A tests.apps.fault_app worker` subprocesses where a process is
killed; what their steps do is observed across processes through the marks file and Redis
counters of `tests.apps.fault_app`. Every wait is bounded and no assertion is about timing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen, TimeoutExpired
from typing import Any, TypeVar

import pytest
from celery import Celery
from celery.result import AsyncResult
from celery.signals import before_task_publish

from ergate_celery import ErgateCelery, Job, JobStatus, Workflow
from ergate_celery.beat import recover_stuck_jobs
from ergate_celery.stores.base import job_document

from .apps import fault_app
from .conftest import Setup
from .services import services_required

WAIT = 60
T = TypeVar("T")

#: Redis redelivers an unacknowledged message only after `visibility_timeout`, and kombu
#: looks for such messages every `unacked_restore_interval` x `unacked_restore_throttle` s
#: (100 s by default): small values make a dead worker's message come back within seconds.
FAST_REDIS_REDELIVERY = {
    "visibility_timeout": 5,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}


# Helpers -----------------------------------------------------------------------------------


def _wait_until(condition: Callable[[], T], timeout: float = WAIT, what: str = "") -> T:
    """Poll `condition` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout} s: {what or condition}")
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    """The live child processes of `pid` (the prefork pool of a worker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _kill_celery(pid: int) -> None:
    """SIGKILL `pid` if it is still one of our celery processes."""
    try:
        if b"celery" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return
        os.kill(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass


def _kill_worker(process: Popen[bytes]) -> None:
    """SIGKILL a worker's main process, then its pool: no chance to requeue anything."""
    pool = _children(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    for pid in pool:
        _kill_celery(pid)


@contextmanager
def _worker(
    setup: Setup,
    name: str,
    *,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
    loglevel: str = "INFO",
) -> Iterator[Popen[bytes]]:
    """A `celery -A tests.apps.fault_app worker` (prefork) on the setup's queue.

    On exit the worker is stopped as `Setup.celery` does, and any pool process left over
    (its main process was killed, or would not stop) is killed.
    """
    args = [
        "worker",
        "-P",
        "prefork",
        "-c",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-Q",
        setup.conf["task_default_queue"],
        "-n",
        f"{name}-{uuid.uuid4().hex[:6]}@%h",
        "-l",
        loglevel,
    ]
    environment = {"ERGATE_FAULT_MARKS": str(_marks_path(setup)), **(env or {})}
    pool: list[int] = []
    try:
        with setup.celery(*args, env=environment, module="tests.apps.fault_app") as process:
            try:
                yield process
            finally:
                if process.poll() is None:
                    pool = _children(process.pid)
    finally:
        for pid in pool:
            _kill_celery(pid)


def _marks_path(setup: Setup) -> Path:
    return setup.tmp_path / "marks"


def _runs(setup: Setup, job_id: str, step: str | None = None) -> list[dict[str, Any]]:
    """The step runs of a job the marks file recorded, oldest first."""
    return [
        mark
        for mark in fault_app.read_marks(_marks_path(setup))
        if mark["job_id"] == job_id and (step is None or mark["step"] == step)
    ]


def _step_counts(setup: Setup, job_id: str) -> Counter[str]:
    return Counter(mark["step"] for mark in _runs(setup, job_id))


def _counting_workflow(name: str, runs: Counter[str], first_sleep: float = 0.0) -> Workflow:
    """Three steps that count their runs in this process."""
    workflow = Workflow(unique_name=name)
    lock = threading.Lock()

    def count(step: str) -> None:
        with lock:
            runs[step] += 1

    @workflow.step
    def a(x: int) -> int:
        count("a")
        time.sleep(first_sleep)
        return x + 1

    @workflow.step
    def b(x: int) -> int:
        count("b")
        return x * 2

    @workflow.step
    def c(x: int) -> int:
        count("c")
        return x - 1

    return workflow


# 1. A worker killed while a step runs ------------------------------------------------------


@pytest.mark.setup("redis", "rabbitmq_postgres")
@pytest.mark.parametrize("kill", ["pool_child", "whole_worker"])
def test_sigkilled_worker_step_reruns_and_job_completes(
    setup_name: str, make_setup: Callable[..., Setup], kill: str
) -> None:
    """Killing the pool child exercises `reject_on_worker_lost` (the surviving main process
    requeues the message); killing the whole worker exercises the broker's redelivery of an
    unacknowledged message (at once on RabbitMQ, after `visibility_timeout` on Redis)."""
    extra = {"broker_transport_options": FAST_REDIS_REDELIVERY} if setup_name == "redis" else {}
    setup = make_setup(setup_name, **extra)
    setup.ergate.register_workflow(fault_app.slow)
    job = setup.ergate.submit_job("fault_slow", initial_input_value=1)
    job_id = str(job.id)

    with _worker(setup, "first") as worker:
        running = _wait_until(lambda: _runs(setup, job_id, "second"), what="step 2 started")
        stored = setup.ergate.get_job(job_id)
        assert (stored.status, stored.current_step, stored.attempt) == (JobStatus.RUNNING, 1, 1)
        victim = running[0]["pid"]
        assert victim in _children(worker.pid), "step 2 runs in a pool process of the worker"
        if kill == "pool_child":
            os.kill(victim, signal.SIGKILL)
            done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
        else:
            _kill_worker(worker)
    if kill == "whole_worker":
        # Nothing runs the job now: it waits, RUNNING, for its message to come back.
        assert setup.ergate.get_job(job_id).status is JobStatus.RUNNING
        with _worker(setup, "fresh"):
            done = setup.ergate.wait_for_job(job_id, timeout=WAIT)

    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == (1 + 1) * 10 + 3
    assert (done.steps_completed, done.percent_completed) == (3, 100.0)
    counts = _step_counts(setup, job_id)
    assert counts["first"] == 1
    assert counts["second"] >= 2
    assert counts["third"] == 1
    # Every start of step 2 was claimed as a new attempt, and its hop stayed the same.
    second = _runs(setup, job_id, "second")
    assert sorted(run["attempt"] for run in second) == list(range(1, len(second) + 1))
    assert {run["hop"] for run in second} == {1}
    assert _runs(setup, job_id, "third")[0]["attempt"] == 1


# 1b. A worker killed after storing a step, before publishing the next ----------------------


def _strand_after_commit(setup: Setup) -> str:
    """Run a `fault_window` job whose worker dies right after its first step is stored and
    before the second is published; returns the job id once the requeued message of the
    first step has been handled again (and dropped, as stale)."""
    setup.ergate.register_workflow(fault_app.window)
    flag = setup.tmp_path / "killed-after-commit"
    job = setup.ergate.submit_job("fault_window", initial_input_value=1)
    job_id = str(job.id)
    with _worker(setup, "window", env={"ERGATE_FAULT_KILL_AFTER_COMMIT": str(flag)}):
        _wait_until(flag.exists, what="the worker killed itself after the commit")
        rerun = AsyncResult(f"{job_id}:0", app=setup.app).get(timeout=WAIT)
        assert rerun["dropped"] is True
        stored = setup.ergate.get_job(job_id)
        assert (stored.status, stored.current_step, stored.steps_completed) == (
            JobStatus.QUEUED,
            1,
            1,
        )
        with suppress(TimeoutError):
            setup.ergate.wait_for_job(job_id, timeout=5)
    return job_id


@pytest.mark.setup("redis")
@pytest.mark.xfail(
    strict=True,
    raises=TimeoutError,
    reason="execution.py: a worker that dies between `_finish` (the step's outcome is "
    "stored) and `_publish_or_fail` strands the job QUEUED at the next step with no "
    "message; the requeued message of the step is dropped as stale, so only the stuck-job "
    "sweep (ergate_stuck_after, 1 h by default) recovers it",
)
def test_worker_killed_between_commit_and_publish_job_completes(
    make_setup: Callable[..., Setup],
) -> None:
    setup = make_setup("redis")
    job_id = _strand_after_commit(setup)
    done = setup.ergate.wait_for_job(job_id, timeout=0.1)
    assert done.status is JobStatus.COMPLETED


@pytest.mark.setup("redis")
def test_job_stranded_between_commit_and_publish_is_recovered_by_sweep(
    make_setup: Callable[..., Setup],
) -> None:
    setup = make_setup("redis", ergate_stuck_after=1)
    job_id = _strand_after_commit(setup)
    assert setup.ergate.get_job(job_id).status is JobStatus.QUEUED
    assert recover_stuck_jobs(setup.ergate) == 1
    with _worker(setup, "after-sweep"):
        done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == 4
    assert len(done.recoveries) == 1
    assert "requeue: QUEUED at step #1" in done.recoveries[0]
    assert _step_counts(setup, job_id) == {"commit": 1, "publish": 1, "done": 1}


# 2. Duplicated messages --------------------------------------------------------------------


@contextmanager
def _captured_messages(prefix: str) -> Iterator[dict[str, list[Any]]]:
    """The job documents published for tasks named `<prefix>...`, by task name."""
    messages: dict[str, list[Any]] = {}

    def capture(sender: str | None = None, body: Any = None, **kwargs: Any) -> None:
        if sender and sender.startswith(prefix):
            messages.setdefault(sender, []).append(body[0][0])

    before_task_publish.connect(capture, weak=False)
    try:
        yield messages
    finally:
        before_task_publish.disconnect(capture)


def test_duplicate_message_does_not_fork(setup: Setup, worker: Any) -> None:
    runs: Counter[str] = Counter()
    setup.ergate.register_workflow(_counting_workflow("dup", runs))
    with _captured_messages("ergate.dup.") as messages, worker():
        job = setup.ergate.submit_job("dup", initial_input_value=5)
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
        assert done.status is JobStatus.COMPLETED
        before = job_document(setup.ergate.get_job(str(job.id)))
        first, second = messages["ergate.dup.a"][0], messages["ergate.dup.b"][0]
        assert first == job_document(job)
        resent = [("ergate.dup.a", first), ("ergate.dup.a", first), ("ergate.dup.b", second)]
        task_ids = []
        for name, payload in resent:
            task_ids.append(f"dup-{uuid.uuid4()}")
            setup.app.send_task(name, args=[payload], task_id=task_ids[-1])
        summaries = [AsyncResult(i, app=setup.app).get(timeout=WAIT) for i in task_ids]
    assert [s.get("dropped") for s in summaries] == [True, True, True]
    assert {s["status"] for s in summaries} == {"COMPLETED"}
    assert runs == {"a": 1, "b": 1, "c": 1}
    assert done.last_return_value == (5 + 1) * 2 - 1
    assert job_document(setup.ergate.get_job(str(job.id))) == before
    assert AsyncResult(str(job.id), app=setup.app).state == "COMPLETED"


def test_duplicate_delivered_while_step_runs_does_not_fork(setup: Setup, worker: Any) -> None:
    """Both copies of the first step's message wait in the queue before the worker (two
    threads) starts: they may run the first step twice, at once, but the job moves on once."""
    runs: Counter[str] = Counter()
    setup.ergate.register_workflow(_counting_workflow("dup_live", runs, first_sleep=0.5))
    job = setup.ergate.submit_job("dup_live", initial_input_value=5)
    duplicate = f"dup-{uuid.uuid4()}"
    setup.app.send_task("ergate.dup_live.a", args=[job_document(job)], task_id=duplicate)
    with worker():
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
        AsyncResult(duplicate, app=setup.app).get(timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == (5 + 1) * 2 - 1
    assert (done.steps_completed, done.percent_completed) == (3, 100.0)
    assert runs["a"] in (1, 2)
    assert (runs["b"], runs["c"]) == (1, 1)


# 3. The Redis server restarts in the middle of a job ---------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class _RedisServer:
    """A private redis-server on loopback that keeps its data across restarts (AOF)."""

    def __init__(self, binary: str, port: int, folder: Path) -> None:
        self.binary, self.port, self.folder = binary, port, folder
        self.process: Popen[bytes] | None = None
        folder.mkdir(exist_ok=True)

    def start(self) -> None:
        log = self.folder / f"redis-{time.monotonic_ns()}.log"
        with log.open("wb") as out:
            self.process = Popen(
                [
                    *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--daemonize", "no", "--save", "", "--dir", str(self.folder)),
                    *("--appendonly", "yes", "--appendfsync", "always"),
                ],
                stdin=DEVNULL,
                stdout=out,
                stderr=STDOUT,
            )
        process = self.process
        _wait_until(lambda: process.poll() is not None or _redis_ping(self.port), 20, "redis")
        assert process.poll() is None, log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed; the Redis restart test starts its own server"
        if services_required():
            pytest.fail(f"ERGATE_REQUIRE_SERVICES is set and {message}")
        pytest.skip(message)
    return binary


def test_redis_restart_mid_job_completes(tmp_path: Path) -> None:
    binary = _redis_binary()
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    conf: dict[str, Any] = {
        "task_default_queue": f"ergate-test-{uuid.uuid4().hex[:12]}",
        "broker_connection_retry_on_startup": False,
        "result_extended": True,
        "worker_hijack_root_logger": False,
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
    server = _RedisServer(binary, port, tmp_path / "redis-data")
    try:
        server.start()
        job = setup.ergate.submit_job("fault_outage", initial_input_value=[])
        job_id = str(job.id)
        with _worker(setup, "outage"):
            _wait_until(lambda: _runs(setup, job_id, "outage_2"), what="step 3 started")
            # Redis stops while step 3 runs, and is down when step 3 ends (1.5 s later):
            # storing its outcome and publishing step 4 must wait for the server to return.
            server.stop()
            time.sleep(2.5)
            server.start()
            done = _wait_for_job_through_outages(setup.ergate, job_id)
    finally:
        server.stop()
        app.close()
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == [f"outage_{i}" for i in range(5)]
    counts = _step_counts(setup, job_id)
    assert set(counts) == {f"outage_{i}" for i in range(5)}
    # Steps before the outage ran once; the one it hit may rerun; the later ones ran once.
    assert (counts["outage_0"], counts["outage_1"]) == (1, 1)
    assert counts["outage_2"] >= 1
    assert (counts["outage_3"], counts["outage_4"]) == (1, 1)


def _wait_for_job_through_outages(ergate: ErgateCelery, job_id: str) -> Job:
    def final() -> Job | None:
        try:
            job = ergate.get_job(job_id)
        except Exception:  # the server is still coming back
            return None
        return job if job.is_final else None

    return _wait_until(final, what=f"job {job_id} final")
