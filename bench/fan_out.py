"""Fan-out beside a Celery `chord` of the same width, on Redis and on PostgreSQL.

For each width (100, 1,000 and 10,000 in the full run) and each backend (`redis`: Redis
broker and backend; `rabbitmq_postgres`: RabbitMQ broker, `db+postgresql` backend), with one
`celery worker -P prefork -c 2` on a queue of the run's own:

- children created per second: ergate_celery's fan-out step makes `width` child jobs (stored
  and published) while it runs, so this is `width` / the step's duration, from the job's
  own timings; a chord's header is published by the caller, so its side is `width` / the
  time `chord(...).apply_async()` takes.
- last child's end to the join's start: ergate_celery's join step starts (its timing's
  `started_at`) after the last child's record was stamped final (`finished_at`); the chord's
  callback reads the clock when it starts, its members return the clock when they end.
  Both sides read the same machine's clock.

On Redis, Celery counts a chord's members in the backend; on the database backend it polls
with `celery.chord_unlock` (once a second by default): each side as it comes. Redis db 12 is
flushed before and after; PostgreSQL gets a schema of its own, dropped at the end.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from celery import Celery, chord

from ergate_celery import ChildResult, ErgateCelery, FanOut, FanOutPath, Workflow

from .apps import POSTGRES_SCHEMA, BenchConfig, celery_conf
from .storage import flush_redis, postgres
from .workers import exited, started

BACKENDS = ("redis", "rabbitmq_postgres")
#: A schema of its own beside the PostgreSQL setups' (dropped at the end).
SCHEMA = f"{POSTGRES_SCHEMA}_fan_out"


@dataclass(frozen=True)
class FanOutSizes:
    """The widths measured, and how long one measure may take."""

    widths: tuple[int, ...] = (100, 1_000, 10_000)
    timeout: float = 1800.0


FULL = FanOutSizes()
QUICK = FanOutSizes(widths=(100, 1_000), timeout=600.0)
TINY = FanOutSizes(widths=(20,), timeout=120.0)

child = Workflow(unique_name="bench_fan_child")


@child.step
def touch(x: int) -> int:
    """Do nothing: the child's end is stamped by its store."""
    return x


parent = Workflow(unique_name="bench_fan_parent")


@parent.step(paths=[FanOutPath("gather")])
def spread(width: int) -> None:
    """Make one child per number."""
    raise FanOut("bench_fan_child", inputs=list(range(width)), then=gather)


@parent.step
def gather(results: list[ChildResult]) -> int:
    """Count the children that completed."""
    return sum(1 for result in results if result.ok)


def member(number: int) -> float:
    """A chord's member: when it ends."""
    return time.time()


def callback(ends: list[float]) -> dict[str, float]:
    """A chord's callback: when it starts, and when the last member ended."""
    return {"start": time.time(), "last_end": max(ends, default=0.0)}


def make_app(setup: str, queue: str) -> tuple[Celery, ErgateCelery]:
    """The app of this bench on `setup`: the workflows, and a chord's member and callback."""
    celery_app = Celery("ergate_bench_fan_out", set_as_current=False)
    config = BenchConfig(setup=setup, queue=queue, postgres_schema=SCHEMA)
    celery_app.conf.update(celery_conf(config), broker_connection_retry_on_startup=True)
    celery_app.task(name="bench_fan.member")(member)
    celery_app.task(name="bench_fan.callback")(callback)
    ergate = ErgateCelery(celery_app)
    ergate.register_workflow(child)
    ergate.register_workflow(parent)
    return celery_app, ergate


# `celery -A bench.fan_out worker` reads `app`; the setup and queue come from the harness.
app, ergate = make_app(
    os.environ.get("ERGATE_BENCH_SETUP", "redis"),
    os.environ.get("ERGATE_BENCH_QUEUE", "ergate-bench-fan-out"),
)

WORKER = [
    sys.executable,
    *("-m", "celery", "-A", "bench.fan_out", "worker", "-P", "prefork", "-c", "2"),
    *("-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"),
]


def _fan_out(bench: ErgateCelery, width: int, timeout: float) -> dict[str, float]:
    job_id = str(bench.submit_job("bench_fan_parent", initial_input_value=width).id)
    done = bench.wait_for_job(job_id, timeout=timeout)
    if done.last_return_value != width:
        raise RuntimeError(f"the join counted {done.last_return_value} of {width} children")
    timings = {timing.step: timing for timing in done.timings}
    making = timings["spread"].duration
    last_end = None
    cursor = None
    while True:
        page = bench.list_jobs(parent=job_id, limit=1000, cursor=cursor)
        ends = [job.finished_at for job in page.jobs if job.finished_at is not None]
        last_end = max([*ends, *([last_end] if last_end else [])])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert last_end is not None
    return {
        "created_per_s": width / making,
        "make_s": making,
        "last_end_to_join_s": (timings["gather"].started_at - last_end).total_seconds(),
    }


def _chord(celery_app: Celery, width: int, timeout: float) -> dict[str, float]:
    member, callback = celery_app.tasks["bench_fan.member"], celery_app.tasks["bench_fan.callback"]
    start = time.perf_counter()
    result = chord(member.s(n) for n in range(width))(callback.s())
    publishing = time.perf_counter() - start
    outcome = result.get(timeout=timeout, interval=0.01)
    return {
        "created_per_s": width / publishing,
        "make_s": publishing,
        "last_end_to_join_s": outcome["start"] - outcome["last_end"],
    }


def _clean(setup: str) -> None:
    if setup == "redis":
        flush_redis()
    else:
        postgres(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE", f"CREATE SCHEMA {SCHEMA}")


def run_backend(
    setup: str, sizes: FanOutSizes, folder: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Both sides at every width on one backend, with one worker of its own."""
    queue = f"ergate-bench-fan-out-{uuid.uuid4().hex[:8]}"
    _clean(setup)
    celery_app, bench = make_app(setup, queue)
    rows: dict[str, Any] = {}
    env = {"ERGATE_BENCH_SETUP": setup, "ERGATE_BENCH_QUEUE": queue}
    try:
        with started(WORKER, env, folder / f"worker-{setup}.log") as pid:
            for width in sizes.widths:
                log(f"fan-out: {setup}, {width:,} children and a chord of {width:,}…")
                rows[str(width)] = {
                    "ergate": _fan_out(bench, width, sizes.timeout),
                    "chord": _chord(celery_app, width, sizes.timeout),
                }
                if exited(pid) is not None:
                    raise RuntimeError("the bench worker exited")
    finally:
        bench.close()
        celery_app.close()
        if setup == "redis":
            flush_redis()
        else:
            postgres(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    return rows


def run_fan_out(
    sizes: FanOutSizes,
    unavailable: Callable[[str], str | None],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Every backend that answers; a backend that fails is recorded with its error."""
    report: dict[str, Any] = {"sizes": asdict(sizes), "backends": {}}
    with tempfile.TemporaryDirectory(prefix="ergate-bench-fan-out-") as name:
        for setup in BACKENDS:
            reason = unavailable(setup)
            if reason is not None:
                report["backends"][setup] = {"status": "skipped", "reason": reason}
                continue
            try:
                rows = run_backend(setup, sizes, Path(name), log)
            except Exception as exc:
                report["backends"][setup] = {
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                }
                log(f"fan-out on {setup} failed: {type(exc).__name__}: {exc}")
            else:
                report["backends"][setup] = {"status": "ok", "widths": rows}
    return report


def table(report: dict[str, Any]) -> str:
    """One line per backend and width: both sides' creation rate and join latency."""
    lines = [
        f"{'backend':<18}{'width':>7}  {'created/s ergate':>17}{'chord':>10}"
        f"  {'last end → join, ms ergate':>27}{'chord':>10}"
    ]
    for setup, outcome in report["backends"].items():
        if outcome["status"] != "ok":
            lines.append(f"{setup:<18}{outcome['status']}: {outcome.get('reason') or ''}")
            continue
        for width, row in outcome["widths"].items():
            ours, bare = row["ergate"], row["chord"]
            lines.append(
                f"{setup:<18}{int(width):>7,}  {ours['created_per_s']:>17,.0f}"
                f"{bare['created_per_s']:>10,.0f}  {ours['last_end_to_join_s'] * 1000:>27,.1f}"
                f"{bare['last_end_to_join_s'] * 1000:>10,.1f}"
            )
    return "\n".join(lines)
