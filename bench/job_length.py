"""Does a step cost more the more steps its job has run? A step of a 100-step job against a
step of a 5-step job, on Redis and on RabbitMQ + PostgreSQL, next to bare chains of the same
lengths.

A job's per-step time is read from its record: from its first step's start (`started_at`) to
its last step's start, over the steps in between (start to start: a step, its outcome's write,
the next message's hop and claim). So it leaves out what a job pays once (the submission, the
first hop, the caller's wait), which would make the longer job look cheaper per step. A bare
chain has no such record: its per-link time is end to end, from `apply_async` to the result.

Each pair runs a short and a long job (and a short and a long chain) back to back, the order
alternating from pair to pair; the figure is the median over pairs of the per-step time of
the long one over the short one. The target is a long/short ratio of at most 1.1.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from celery import chain

from . import apps
from .apps import Bench, BenchConfig
from .report import attempt, not_ran
from .storage import postgres
from .workers import worker

#: The setups measured, in the table's order.
SETUPS = ("redis", "rabbitmq_postgres")
#: The PostgreSQL setup's own schema (dropped before and after).
SCHEMA = f"{apps.POSTGRES_SCHEMA}_length"


@dataclass(frozen=True)
class LengthSizes:
    """How many pairs, and the bound on any wait."""

    pairs: int = 7
    timeout: float = 300.0


FULL = LengthSizes()
QUICK = LengthSizes(pairs=2, timeout=120.0)
TINY = LengthSizes(pairs=1, timeout=120.0)


def _job_ms_per_step(bench: Bench, workflow: str, steps: int, timeout: float) -> float:
    assert bench.ergate is not None
    job = bench.ergate.submit_job(workflow, initial_input_value=1)
    done = bench.ergate.wait_for_job(job.id, timeout=timeout)
    if done.status.name != "COMPLETED" or done.steps_completed != steps:
        raise RuntimeError(f"wrong outcome for {workflow}: {done!r}")
    if done.started_at is None or not done.timings or done.timings[-1].index != steps - 1:
        raise RuntimeError(f"no timings of the last step of {workflow}: {done!r}")
    # Start to start: the first step's to the last one's, `steps - 1` steps apart.
    elapsed = (done.timings[-1].started_at - done.started_at).total_seconds()
    return elapsed * 1000 / (steps - 1)


def _chain_ms_per_link(bench: Bench, steps: int, timeout: float) -> float:
    signature = chain(bench.noop.s(1), *(bench.noop.s() for _ in range(steps - 1)))
    start = time.perf_counter()
    value = signature.apply_async().get(timeout=timeout, interval=apps.WAIT_POLL_INTERVAL)
    elapsed = time.perf_counter() - start
    if value != 1:
        raise RuntimeError(f"a chain of {steps} gave {value!r}")
    return elapsed * 1000 / steps


def measure(bench: Bench, sizes: LengthSizes) -> dict[str, Any]:
    """Per-step times of short and long jobs and chains, and their long/short ratios."""
    short, long = apps.SHORT_STEPS, apps.LENGTHY_STEPS
    runs: dict[str, Callable[[], float]] = {
        "ergate_short": lambda: _job_ms_per_step(bench, apps.SHORT_WORKFLOW, short, sizes.timeout),
        "ergate_long": lambda: _job_ms_per_step(bench, apps.LENGTHY_WORKFLOW, long, sizes.timeout),
        "bare_short": lambda: _chain_ms_per_link(bench, short, sizes.timeout),
        "bare_long": lambda: _chain_ms_per_link(bench, long, sizes.timeout),
    }
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    ratios: dict[str, list[float]] = {"ergate": [], "bare": []}
    for pair in range(sizes.pairs):
        order = list(runs) if pair % 2 == 0 else list(reversed(runs))
        measured = {name: runs[name]() for name in order}
        for name, value in measured.items():
            times[name].append(value)
        for side in ratios:
            ratios[side].append(measured[f"{side}_long"] / measured[f"{side}_short"])
    return {
        "steps": {"short": short, "long": long},
        "pairs": sizes.pairs,
        "ms_per_step_median": {name: statistics.median(values) for name, values in times.items()},
        "long_over_short": {
            side: {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
            for side, values in ratios.items()
        },
    }


def run_job_length(
    sizes: LengthSizes, unavailable: Callable[[str], str | None], log: Callable[[str], None]
) -> dict[str, Any]:
    """The measure on each of `SETUPS`, each with a worker of its own (prefork, 2 processes)."""
    return {
        "backends": {
            setup: attempt(
                f"job length on {setup}",
                setup,
                unavailable,
                partial(_on_worker, setup, sizes, log),
                log,
            )
            for setup in SETUPS
        }
    }


def _on_worker(setup: str, sizes: LengthSizes, log: Callable[[str], None]) -> dict[str, Any]:
    queue = f"ergate-bench-length-{uuid.uuid4().hex[:8]}"
    config = BenchConfig(setup=setup, queue=queue, postgres_schema=SCHEMA)
    with ExitStack() as stack:
        if setup in apps.POSTGRES_SETUPS:
            drop = f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"
            postgres(drop, f"CREATE SCHEMA {SCHEMA}")
            stack.callback(postgres, drop)
        bench = apps.build(config)
        stack.callback(bench.app.close)
        if setup == "rabbitmq_postgres":
            stack.callback(_delete_queue, bench)
        folder = Path(tempfile.mkdtemp(prefix="ergate-bench-length-"))
        log(f"job length on {setup}: 5-step against 100-step jobs…")
        stack.enter_context(worker(config, bench, folder, sizes.timeout))
        return measure(bench, sizes)
    raise AssertionError("unreachable")


def _delete_queue(bench: Bench) -> None:
    # RabbitMQ keeps a durable queue after its consumers leave.
    with bench.app.connection_for_write() as conn:
        conn.default_channel.queue_delete(bench.config.queue)


def table(outcome: dict[str, Any]) -> str:
    """Per-step milliseconds of short and long runs, and the long/short ratio, per setup and
    side."""
    lines = []
    for setup, measured in outcome.get("backends", {}).items():
        note = not_ran(f"job length on {setup}", measured)
        if note is not None:
            lines.append(note)
            continue
        medians = measured["ms_per_step_median"]
        steps = measured["steps"]
        lines.append(
            f"{setup:17}  side    ms/step ({steps['short']} steps)  ms/step ({steps['long']} "
            f"steps)  long/short (median, min-max of {measured['pairs']} pairs)"
        )
        for side in ("bare", "ergate"):
            ratio = measured["long_over_short"][side]
            lines.append(
                f"{'':17}  {side:6}  {medians[f'{side}_short']:17.2f}  "
                f"{medians[f'{side}_long']:18.2f}  "
                f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"
            )
    return "\n".join(lines)
