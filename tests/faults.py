"""What the tests that break things share: `celery worker` subprocesses that can be killed, a
supervisor that replaces them, what their steps recorded, and a Redis server of a test's own
that can be stopped and started.

What the steps do is observed across processes through the marks file and Redis counters of
`tests.apps.fault_app`. Every wait is bounded and no assertion is about timing.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen, TimeoutExpired
from typing import Any

import pytest

from ergate_celery import Job
from ergate_celery.scheduling.beat import recover_stuck_jobs

from .apps import fault_app
from .services import services_required
from .support import Setup, wait_until

WAIT = 60

#: Redis redelivers an unacknowledged message only after `visibility_timeout`, and kombu
#: looks for such messages every `unacked_restore_interval` x `unacked_restore_throttle` s
#: (100 s by default): small values make a dead worker's message come back within seconds.
FAST_REDIS_REDELIVERY = {
    "visibility_timeout": 5,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}


def children_of(pid: int) -> list[int]:
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


def kill_worker(process: Popen[bytes]) -> None:
    """SIGKILL a worker's main process, then its pool: no chance to requeue anything."""
    pool = children_of(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    for pid in pool:
        _kill_celery(pid)


def hash_counts(client: Any, key: str) -> Counter[str]:
    """A soak's counters: a Redis hash of counts, by field."""
    return Counter({k.decode(): int(v) for k, v in client.hgetall(key).items()})


def kill_one(workers: list[Supervisor], rng: random.Random, whole: bool) -> None:
    """A soak's kill: a random worker of `workers` killed whole (main process and pool), or
    one of its pool processes SIGKILLed."""
    victim = rng.choice(workers).ensure()
    if whole:
        kill_worker(victim)
        return
    pool = children_of(victim.pid)
    if pool:
        os.kill(rng.choice(pool), signal.SIGKILL)


@contextmanager
def worker_process(
    setup: Setup,
    name: str,
    *,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
    loglevel: str = "INFO",
    events: bool = False,
    module: str = "tests.apps.fault_app",
) -> Iterator[Popen[bytes]]:
    """A `celery -A <module> worker` (prefork) on the setup's queue; `events` turns worker
    events on (`-E`, as Flower needs).

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
        *(["-E"] if events else []),
    ]
    environment = {"ERGATE_FAULT_MARKS": str(_marks_path(setup)), **(env or {})}
    pool: list[int] = []
    try:
        with setup.celery(*args, env=environment, module=module) as process:
            try:
                yield process
            finally:
                if process.poll() is None:
                    pool = children_of(process.pid)
    finally:
        for pid in pool:
            _kill_celery(pid)


class Supervisor:
    """Keeps a worker running, starting a new one when it exits, as systemd or Kubernetes
    would; `restarts` counts the workers it had to replace. `with Supervisor(...)` starts the
    first and stops the last; `gate` is the file the gated steps of `fault_app` wait for."""

    def __init__(self, setup: Setup, name: str, gate: Path | None = None, **options: Any) -> None:
        if gate is not None:
            options["env"] = {**options.get("env", {}), "ERGATE_FAULT_OUTAGE_GATE": str(gate)}
        self.setup, self.name, self.options = setup, name, options
        self.restarts = 0
        self.process: Popen[bytes] | None = None
        self._running = ExitStack()

    def __enter__(self) -> Supervisor:
        self.ensure()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def ensure(self) -> Popen[bytes]:
        """The running worker, started anew if the last one exited."""
        if self.process is not None and self.process.poll() is None:
            return self.process
        if self.process is not None:
            self.restarts += 1
            self._running.close()
        self._running = ExitStack()
        self.process = self._running.enter_context(
            worker_process(self.setup, f"{self.name}{self.restarts}", **self.options)
        )
        return self.process

    def close(self) -> None:
        """Stop the running worker."""
        self._running.close()
        self.process = None


def _marks_path(setup: Setup) -> Path:
    return setup.tmp_path / "marks"


def step_runs(setup: Setup, job_id: str, step: str | None = None) -> list[dict[str, Any]]:
    """The step runs of a job the marks file recorded, oldest first."""
    return [
        mark
        for mark in fault_app.read_marks(_marks_path(setup))
        if mark["job_id"] == job_id and (step is None or mark["step"] == step)
    ]


def step_counts(setup: Setup, job_id: str) -> Counter[str]:
    return Counter(mark["step"] for mark in step_runs(setup, job_id))


def recover_once(setup: Setup) -> None:
    """Run the sweep until it recovers a job (once `ergate_stuck_after` has passed)."""
    wait_until(lambda: recover_stuck_jobs(setup.ergate), 30, what="the sweep recovered the job")


def final_job(setup: Setup, job_id: str, supervisor: Supervisor) -> Job:
    """Wait for the job to end, keeping a worker up; a server coming back may fail reads."""

    def final() -> Job | None:
        supervisor.ensure()
        try:
            job = setup.ergate.get_job(job_id)
        except Exception:  # the server is still coming back
            return None
        return job if job.is_final else None

    return wait_until(final, 120, 0.2, what=f"job {job_id} final")


class RedisServer:
    """A redis-server of a test's own on a free loopback port that keeps its data across
    restarts (AOF); the test is skipped when redis-server is not installed."""

    def __init__(self, folder: Path) -> None:
        self.binary, self.port, self.folder = _redis_binary(), _free_port(), folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
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
        wait_until(lambda: process.poll() is not None or _redis_ping(self.port), 20, what="redis")
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


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed; the Redis outage tests start their own server"
        if services_required():
            pytest.fail(f"ERGATE_REQUIRE_SERVICES is set and {message}")
        pytest.skip(message)
    return binary
