"""Waiting jobs (issue 15): what a release run handles per second, and how late a sleeping
job wakes up when a real `celery beat` releases it.

Both parts run the workflow `bench_sleepy` on Redis db 12 (flushed before and after), with a
`celery worker -P prefork -c 2` and a queue of their own:

- release rate: N jobs whose first step raised `Sleep(until=T)` for the same T an hour
  ahead; the worker is stopped, then one `release_due_jobs(ergate, now=T)` run in this
  process releases them all (claims each, publishes its next step): jobs per second.
- wake-up lateness: N jobs whose first steps raised `Sleep(until=T_i)` for T_i spread evenly
  over a window, all asleep before the first T_i; then a real `celery beat` releases them and
  the worker runs their second step, which records `start - T_i`. The claim of DESIGN.md
  §8.4 is p99 <= `ergate_schedule_interval` + 0.5 s; this reports whether it held.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from ergate_celery import ErgateCelery, Sleep, WaitPath, Workflow
from ergate_celery.scheduling.beat import release_due_jobs
from ergate_celery.stores import SCHEDULED

from .apps import REDIS_URL, BenchConfig, celery_conf
from .workers import exited, started

WOKEN_KEY = "ergate-bench:woken"
SCHEDULE_INTERVAL = 1.0
#: The claim checked (not asserted): p99 lateness at most the interval plus this.
CLAIM_SLACK = 0.5


@dataclass(frozen=True)
class WaitingSizes:
    """Jobs released in one run, jobs asleep at once, and the window their wake-ups span."""

    release_jobs: int = 5_000
    sleepers: int = 10_000
    window_s: float = 120.0
    timeout: float = 300.0


FULL = WaitingSizes()
QUICK = WaitingSizes(release_jobs=300, sleepers=500, window_s=15.0, timeout=120.0)
TINY = WaitingSizes(release_jobs=20, sleepers=20, window_s=3.0, timeout=60.0)

sleepy = Workflow(unique_name="bench_sleepy")
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(REDIS_URL)
    return _client


@sleepy.step(paths=[WaitPath()])
def fall_asleep(x: dict[str, float]) -> dict[str, float]:
    """Sleep until the time the harness gave."""
    raise Sleep(until=datetime.fromtimestamp(x["until"], UTC), retval=x)


@sleepy.step
def wake_up(x: dict[str, float]) -> None:
    """Record how late this step started after the end of the sleep."""
    _redis().hset(WOKEN_KEY, str(int(x["n"])), time.time() - x["until"])


def make_app(queue: str) -> tuple[Celery, ErgateCelery]:
    """The app of this bench: its Redis db as broker and backend, the queue given."""
    celery_app = Celery("ergate_bench_waiting", set_as_current=False)
    # The redis setup's settings; its worker and beat start while the harness watches, so
    # they may retry the broker connection as they start.
    celery_app.conf.update(
        celery_conf(BenchConfig(setup="redis", queue=queue)),
        ergate_schedule_interval=SCHEDULE_INTERVAL,
        broker_connection_retry_on_startup=True,
    )
    ergate = ErgateCelery(celery_app)
    ergate.register_workflow(sleepy)
    return celery_app, ergate


# `celery -A bench.waiting worker|beat` reads `app`; the queue comes from the harness.
app, ergate = make_app(os.environ.get("ERGATE_BENCH_QUEUE", "ergate-bench-waiting"))


def _command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "bench.waiting", *arguments]


WORKER = _command(
    *("worker", "-P", "prefork", "-c", "2", "-l", "WARNING"),
    *("--without-gossip", "--without-mingle", "--without-heartbeat"),
)


def _asleep(bench: ErgateCelery) -> int:
    """How many jobs the scheduled index holds (every job of this bench there is asleep)."""
    store: Any = bench.store
    return int(_redis().zcard(store.index_keys[SCHEDULED]))


def _wait_for(
    what: str, done: Callable[[], bool], timeout: float, pids: list[int], poll: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        for pid in pids:
            if exited(pid) is not None:
                raise RuntimeError(f"a bench process exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(poll)


def _submit(bench: ErgateCelery, count: int, until: Callable[[int], float]) -> float:
    """Submit `count` jobs, job i sleeping until `until(i)`; the seconds it took."""
    start = time.perf_counter()
    for number in range(count):
        bench.submit_job("bench_sleepy", initial_input_value={"n": number, "until": until(number)})
    return time.perf_counter() - start


def release_rate(bench: ErgateCelery, count: int, folder: Path, timeout: float) -> dict[str, Any]:
    """Jobs per second of one release run over `count` jobs sleeping until the same time."""
    wake = time.time() + 3600
    env = {"ERGATE_BENCH_QUEUE": bench.app.conf.task_default_queue}
    with started(WORKER, env, folder / "worker-release.log") as pid:
        start = time.perf_counter()
        _submit(bench, count, lambda number: wake)
        _wait_for("every job asleep", lambda: _asleep(bench) >= count, timeout, [pid])
        asleep_after = time.perf_counter() - start
    start = time.perf_counter()
    released = release_due_jobs(bench, now=datetime.fromtimestamp(wake + 1, UTC))
    seconds = time.perf_counter() - start
    if released != count:
        raise RuntimeError(f"the release run released {released} of {count} sleeping jobs")
    return {
        "jobs": count,
        "release_run_s": seconds,
        "jobs_per_s": count / seconds,
        "fill_s": asleep_after,
    }


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def lateness(
    bench: ErgateCelery, count: int, window: float, folder: Path, timeout: float, fill_rate: float
) -> dict[str, Any]:
    """p50/p99 seconds from the end of each sleep to the start of the next step."""
    # All must be asleep before the first wake-up: leave 1.5 times the measured fill time.
    first = time.time() + 1.5 * count / fill_rate + 10
    spacing = window / max(count - 1, 1)
    env = {"ERGATE_BENCH_QUEUE": bench.app.conf.task_default_queue}
    with started(WORKER, env, folder / "worker-lateness.log") as pid:
        _submit(bench, count, lambda number: first + number * spacing)
        _wait_for("every job asleep", lambda: _asleep(bench) >= count, timeout, [pid])
        margin = first - time.time()
        beat = _command("beat", "-s", str(folder / "beat-schedule"), "-l", "WARNING")
        with started(beat, env, folder / "beat.log") as beat_pid:
            _wait_for(
                "every job woken",
                lambda: _redis().hlen(WOKEN_KEY) >= count,
                max(first + window - time.time(), 0) + timeout,
                [pid, beat_pid],
                poll=0.5,
            )
    late = sorted(float(value) for value in _redis().hvals(WOKEN_KEY))
    p99 = _percentile(late, 0.99)
    claim = SCHEDULE_INTERVAL + CLAIM_SLACK
    return {
        "jobs": count,
        "window_s": window,
        "wakeups_per_s": count / window if window else None,
        "asleep_margin_s": margin,
        "p50_s": _percentile(late, 0.5),
        "p99_s": p99,
        "max_s": late[-1],
        "min_s": late[0],
        "early": sum(1 for value in late if value < 0),
        "claim_s": claim,
        "claim_holds": p99 <= claim,
    }


def run_waiting(sizes: WaitingSizes, log: Callable[[str], None]) -> dict[str, Any]:
    """Both parts on the bench's Redis db, flushed before and after; an error is recorded."""
    report: dict[str, Any] = {
        "sizes": asdict(sizes),
        "schedule_interval_s": SCHEDULE_INTERVAL,
        "measures": {},
        "errors": {},
    }
    client = _redis()
    queue = f"ergate-bench-waiting-{uuid.uuid4().hex[:8]}"
    # An app of this run's own: REDIS_URL may have been set after this module was imported.
    bench_app, bench = make_app(queue)
    fill_rate = 50.0
    with tempfile.TemporaryDirectory(prefix="ergate-bench-waiting-") as name:
        folder = Path(name)
        try:
            client.flushdb()
            log(f"waiting: release run over {sizes.release_jobs:,} sleeping jobs…")
            try:
                rate = release_rate(bench, sizes.release_jobs, folder, sizes.timeout)
                report["measures"]["release"] = rate
                fill_rate = rate["jobs"] / rate["fill_s"]
                log(f"waiting: {rate['jobs_per_s']:,.0f} jobs released per second")
            except Exception as exc:
                report["errors"]["release"] = f"{type(exc).__name__}: {exc}"
                log(f"waiting: release rate failed: {type(exc).__name__}: {exc}")
            client.flushdb()
            log(f"waiting: {sizes.sleepers:,} sleeping jobs woken by beat over {sizes.window_s} s…")
            try:
                late = lateness(
                    bench, sizes.sleepers, sizes.window_s, folder, sizes.timeout, fill_rate
                )
                report["measures"]["lateness"] = late
                log(
                    f"waiting: lateness p50 {late['p50_s']:.3f} s, p99 {late['p99_s']:.3f} s "
                    f"(claim <= {late['claim_s']} s: {'holds' if late['claim_holds'] else 'FAILS'})"
                )
            except Exception as exc:
                report["errors"]["lateness"] = f"{type(exc).__name__}: {exc}"
                log(f"waiting: lateness failed: {type(exc).__name__}: {exc}")
        finally:
            client.flushdb()
            bench.close()
            bench_app.close()
    return report


def table(report: dict[str, Any]) -> str:
    """The waiting-jobs numbers, one line each."""
    lines = []
    rate = report["measures"].get("release")
    if rate:
        lines.append(
            f"release run: {rate['jobs']:,} sleeping jobs due at once released in "
            f"{rate['release_run_s']:.2f} s = {rate['jobs_per_s']:,.0f} jobs/s"
        )
    late = report["measures"].get("lateness")
    if late:
        verdict = "holds" if late["claim_holds"] else "does NOT hold"
        lines.append(
            f"wake-up lateness, {late['jobs']:,} sleeping jobs waking over "
            f"{late['window_s']:.0f} s "
            f"({late['wakeups_per_s']:.0f}/s), beat every {report['schedule_interval_s']} s: "
            f"p50 {late['p50_s']:.3f} s, p99 {late['p99_s']:.3f} s, max {late['max_s']:.3f} s, "
            f"{late['early']} early; claim p99 <= {late['claim_s']} s {verdict}"
        )
        if late["asleep_margin_s"] < 0:
            lines.append(
                f"  (the last job fell asleep {-late['asleep_margin_s']:.1f} s after the first "
                "wake-up time: early wake-ups are late by that much)"
            )
    lines += [f"waiting: {title} failed: {error}" for title, error in report["errors"].items()]
    return "\n".join(lines)


def _elapsed(start: float) -> str:
    return f"{time.perf_counter() - start:.0f} s"


def main() -> int:
    """`python -m bench.waiting [--quick]`."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    quick = parser.parse_args().quick
    start = time.perf_counter()
    report = run_waiting(QUICK if quick else FULL, print)
    print(table(report))
    print(f"({_elapsed(start)})")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
