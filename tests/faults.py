"""What the fault tests share: `celery -A tests.apps.fault_app worker` subprocesses that can be
killed, a supervisor that replaces them, and what their steps recorded.

What the steps do is observed across processes through the marks file and Redis counters of
`tests.apps.fault_app`. Every wait is bounded and no assertion is about timing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from subprocess import Popen
from typing import Any

from ergate_celery import Workflow
from ergate_celery.scheduling.beat import recover_stuck_jobs

from .apps import fault_app
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
    events: bool = False,
) -> Iterator[Popen[bytes]]:
    """A `celery -A tests.apps.fault_app worker` (prefork) on the setup's queue; `events`
    turns worker events on (`-E`, as Flower needs).

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
        with setup.celery(*args, env=environment, module="tests.apps.fault_app") as process:
            try:
                yield process
            finally:
                if process.poll() is None:
                    pool = _children(process.pid)
    finally:
        for pid in pool:
            _kill_celery(pid)


class _Supervisor:
    """Keeps a worker running, starting a new one when it exits, as systemd or Kubernetes
    would; `restarts` counts the workers it had to replace."""

    def __init__(self, setup: Setup, name: str, **options: Any) -> None:
        self.setup, self.name, self.options = setup, name, options
        self.restarts = 0
        self.process: Popen[bytes] | None = None
        self._running = ExitStack()

    def ensure(self) -> Popen[bytes]:
        if self.process is not None and self.process.poll() is None:
            return self.process
        if self.process is not None:
            self.restarts += 1
            self._running.close()
        self._running = ExitStack()
        self.process = self._running.enter_context(
            _worker(self.setup, f"{self.name}{self.restarts}", **self.options)
        )
        return self.process

    def close(self) -> None:
        self._running.close()
        self.process = None


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


def _recover_once(setup: Setup) -> None:
    """Run the sweep until it recovers a job (once `ergate_stuck_after` has passed)."""
    wait_until(lambda: recover_stuck_jobs(setup.ergate), 30, what="the sweep recovered the job")
