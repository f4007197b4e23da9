"""Scheduling benchmark (Redis): how late beat releases jobs, and what a release run costs.

    python -m bench.scheduling [--quick]

- lateness: N jobs due at the same moment, released by a real `celery beat` and run by a
  prefork worker; each job's first step records when it started; p50/p99 of (start - due).
- release cost: the time of one `ergate.release_scheduled_jobs` run with none due, with
  1,000 and with 100,000 jobs scheduled in the future: it must not grow with the count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from celery import Celery

from ergate_celery import ErgateCelery, Workflow
from ergate_celery.scheduling.beat import release_due_jobs

REDIS_URL = os.environ.get("ERGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
STARTED_KEY = "ergate-bench:started"

released = Workflow(unique_name="bench_released")


@released.step
def record_start(x: str) -> str:
    redis.Redis.from_url(REDIS_URL).hset(STARTED_KEY, x, time.time())
    return x


def make_app(queue: str) -> tuple[Celery, ErgateCelery]:
    app = Celery("bench_scheduling", set_as_current=True)
    app.conf.update(
        broker_url=REDIS_URL,
        result_backend=REDIS_URL,
        task_default_queue=queue,
        ergate_schedule_interval=0.5,
        ergate_release_batch_size=1000,
        broker_connection_retry_on_startup=True,
    )
    ergate = ErgateCelery(app)
    ergate.register_workflow(released)
    return app, ergate


app, ergate = make_app(os.environ.get("ERGATE_BENCH_QUEUE", "ergate-bench-scheduling"))


def _submit_due_at(count: int, due: datetime, tag: str) -> None:
    for i in range(count):
        ergate.submit_job(
            "bench_released", initial_input_value=f"{tag}-{i}", requested_start_time=due
        )


def release_cost(counts: list[int]) -> dict[int, float]:
    """Median ms of a release run with `count` future jobs and none due."""
    costs: dict[int, float] = {}
    far = datetime.now(UTC) + timedelta(days=30)
    scheduled = 0
    for count in counts:
        _submit_due_at(count - scheduled, far, f"future{count}")
        scheduled = count
        runs = []
        for _ in range(21):
            start = time.perf_counter()
            assert release_due_jobs(ergate) == 0
            runs.append((time.perf_counter() - start) * 1000)
        costs[count] = statistics.median(runs)
        print(f"release run with {count:>7,} scheduled, none due: {costs[count]:.3f} ms (median)")
    return costs


def lateness(count: int, folder: Path) -> tuple[float, float]:
    """p50 and p99 seconds between the due time and the first step's start."""
    start = time.perf_counter()
    probe = datetime.now(UTC) + timedelta(days=1)
    _submit_due_at(50, probe, "probe")
    per_job = (time.perf_counter() - start) / 50
    due = datetime.now(UTC) + timedelta(seconds=count * per_job * 1.5 + 5)
    _submit_due_at(count, due, "due")
    env = {**os.environ, "ERGATE_BENCH_QUEUE": app.conf.task_default_queue}
    base = [sys.executable, "-m", "celery", "-A", "bench.scheduling"]
    processes = [
        subprocess.Popen(
            [
                *base,
                "worker",
                "-P",
                "prefork",
                "-c",
                "2",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [*base, "beat", "-s", str(folder / "beat-schedule"), "-l", "WARNING"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        deadline = time.monotonic() + count * 0.05 + 120
        while client.hlen(STARTED_KEY) < count and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
    started = [float(v) for k, v in client.hgetall(STARTED_KEY).items() if k.startswith(b"due-")]
    if len(started) < count:
        raise RuntimeError(f"only {len(started)} of {count} jobs started")
    late = sorted(t - due.timestamp() for t in started)
    assert late[0] >= 0, "a job started before its time"
    p50 = late[len(late) // 2]
    p99 = late[min(len(late) - 1, int(len(late) * 0.99))]
    print(f"release lateness of {count:,} jobs due at once: p50 {p50:.3f} s, p99 {p99:.3f} s")
    return p50, p99


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    quick = parser.parse_args().quick
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    app.conf.task_default_queue = f"ergate-bench-scheduling-{uuid.uuid4().hex[:8]}"
    os.environ["ERGATE_BENCH_QUEUE"] = app.conf.task_default_queue
    try:
        with tempfile.TemporaryDirectory() as folder:
            lateness(200 if quick else 10_000, Path(folder))
        client.flushdb()
        release_cost([1_000, 5_000] if quick else [1_000, 100_000])
    finally:
        client.flushdb()
    return 0


if __name__ == "__main__":
    sys.exit(main())
