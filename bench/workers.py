"""Worker subprocesses of the benchmark: started in their own session, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from .apps import DEFAULT_WORKER_OPTIONS, WORKER_OPTIONS, Bench, BenchConfig

ROOT = Path(__file__).resolve().parent.parent

_started: list[subprocess.Popen[bytes]] = []


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Warm shutdown, then SIGKILL to the worker's own process group (it has a session)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
    # Pool processes left behind by a killed main process share its group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process in _started:
        _started.remove(process)


def stop_all() -> None:
    """Stop every worker this harness started and that still runs."""
    for process in list(_started):
        _stop(process)


@contextlib.contextmanager
def worker(
    config: BenchConfig,
    bench: Bench,
    log_dir: Path,
    timeout: float,
    options: tuple[str, ...] | None = None,
    own_queue: bool = False,
) -> Iterator[int]:
    """Run `celery -A bench.apps worker` on `config` until the block ends; yields its pid.

    `options` replace the setup's own (`-c 2` unless `apps.WORKER_OPTIONS` says otherwise).
    With `own_queue`, the worker also consumes a queue of its own, through which its
    readiness is checked: needed when several workers share the run's queue, where another
    worker could answer the check (used on Redis only, where a queue leaves nothing behind).
    """
    with _spawned(config, log_dir, options, own_queue) as (process, log_path, probe):
        _wait_ready(bench, process, log_path, min(timeout, 120.0), probe)
        yield process.pid


@contextlib.contextmanager
def workers(
    setups: Sequence[tuple[BenchConfig, Bench]], log_dir: Path, timeout: float
) -> Iterator[list[int]]:
    """One worker per (config, bench), as `worker` starts it, all started before any is
    waited for, so that their start-ups overlap; yields their pids."""
    with contextlib.ExitStack() as stack:
        spawned = [
            stack.enter_context(_spawned(config, log_dir, None, False)) for config, _ in setups
        ]
        for (_, bench), (process, log_path, probe) in zip(setups, spawned, strict=True):
            _wait_ready(bench, process, log_path, min(timeout, 120.0), probe)
        try:
            yield [process.pid for process, _, _ in spawned]
        finally:
            # Their warm shutdowns overlap too; each is then awaited (and forced) in turn.
            for process, _, _ in spawned:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()


@contextlib.contextmanager
def _spawned(
    config: BenchConfig, log_dir: Path, options: tuple[str, ...] | None, own_queue: bool
) -> Iterator[tuple[subprocess.Popen[bytes], Path, str | None]]:
    # The worker process, its log and the queue its readiness is checked through (if its own).
    name = f"bench-{uuid.uuid4().hex[:8]}@127.0.0.1"
    env = {**os.environ, **config.env(), "PYTHONPATH": str(ROOT)}
    log_path = log_dir / f"worker-{name.split('@')[0]}.log"
    if options is None:
        options = WORKER_OPTIONS.get(config.setup, DEFAULT_WORKER_OPTIONS)
    probe = f"{config.queue}.{name.split('@')[0]}" if own_queue else None
    queues = f"{config.queue},{probe}" if probe else config.queue
    command = [
        *(sys.executable, "-m", "celery", "-A", "bench.apps", "worker"),
        *("-P", "prefork", *options, "-n", name, "-Q", queues, "-l", "WARNING"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        _started.append(process)
        try:
            yield process, log_path, probe
        finally:
            _stop(process)


@contextlib.contextmanager
def started(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[int]:
    """Run `command` (a worker, a beat) in its own session until the block ends; yields its
    pid. Its output goes to `log_path`."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _started.append(process)
        try:
            yield process.pid
        finally:
            _stop(process)


def exited(pid: int) -> int | None:
    """The exit code of a process `started` here, or None while it runs."""
    for process in _started:
        if process.pid == pid:
            return process.poll()
    return None


def _wait_ready(
    bench: Bench, process: subprocess.Popen[bytes], log: Path, timeout: float, queue: str | None
) -> None:
    # A round trip through the worker's queue: only this worker consumes it.
    result = bench.noop.apply_async(("ready",), queue=queue) if queue else bench.noop.delay("ready")
    deadline = time.monotonic() + timeout
    while not result.ready():
        if process.poll() is not None:
            raise RuntimeError(f"The worker exited with {process.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"The worker answered nothing within {timeout} s:\n{_tail(log)}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# Memory, from /proc -----------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (read from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 1000:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in task.read_text().split()]
    return found


def _kib(path: str, field: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def tree_memory(pid: int) -> dict[str, float]:
    """RSS and PSS (MiB) of a process and all its descendants, from /proc."""
    pids = descendants(pid)
    rss = sum(_kib(f"/proc/{p}/status", "VmRSS") for p in pids)
    pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss") for p in pids)
    return {"processes": len(pids), "rss_mib": rss / 1024, "pss_mib": pss / 1024}
