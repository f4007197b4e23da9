"""What flow control costs (Redis): a step of a job under a concurrency limit against a step
of the same job without one, and the time from a job's end to the start of the job that
waited for its slot.

The step cost runs pairs of a keyed and an unkeyed 5-step job back to back, the order
alternating; the figure is the median over pairs of keyed over unkeyed time per step (the
keyed job takes its slot at its first claim and frees it at its end: the target is at most
1.1x). The hand-over submits two one-step jobs of a workflow limited to one at a time and
reads, from the records, the second job's `started_at` minus the first's `finished_at`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import apps
from .apps import Bench, BenchConfig
from .report import attempt, not_ran
from .workers import worker


@dataclass(frozen=True)
class FlowSizes:
    """How many pairs, and the bound on any wait."""

    pairs: int = 9
    timeout: float = 120.0


FULL = FlowSizes()
QUICK = FlowSizes(pairs=3)
TINY = FlowSizes(pairs=1)


def _ms_per_step(bench: Bench, workflow: str, timeout: float) -> float:
    assert bench.ergate is not None
    start = time.perf_counter()
    job = bench.ergate.submit_job(workflow, initial_input_value=1)
    done = bench.ergate.wait_for_job(job.id, timeout=timeout)
    elapsed = time.perf_counter() - start
    if done.status.name != "COMPLETED":
        raise RuntimeError(f"wrong outcome for {workflow}: {done!r}")
    return elapsed * 1000 / done.steps_completed


def _hand_over_ms(bench: Bench, timeout: float) -> float:
    assert bench.ergate is not None
    ergate = bench.ergate
    first = ergate.submit_job(apps.SERIAL_WORKFLOW, initial_input_value=1)
    second = ergate.submit_job(apps.SERIAL_WORKFLOW, initial_input_value=2)
    done = [ergate.wait_for_job(job.id, timeout=timeout) for job in (first, second)]
    if any(job.started_at is None or job.finished_at is None for job in done):
        raise RuntimeError(f"a job did not run: {done!r}")
    # Both messages reach the workers at once and either may take the slot first: the one
    # that waited is the one that started last, whichever was submitted first.
    ended, started = sorted(done, key=lambda job: job.started_at or job.submitted_at)
    assert ended.finished_at is not None
    assert started.started_at is not None
    return (started.started_at - ended.finished_at).total_seconds() * 1000


def measure(bench: Bench, sizes: FlowSizes) -> dict[str, Any]:
    """Keyed and unkeyed per-step times, their ratio, and the end-to-next-start times."""
    runs: dict[str, Callable[[], float]] = {
        "keyed": lambda: _ms_per_step(bench, apps.KEYED_WORKFLOW, sizes.timeout),
        "unkeyed": lambda: _ms_per_step(bench, apps.SHORT_WORKFLOW, sizes.timeout),
    }
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    ratios: list[float] = []
    hand_overs: list[float] = []
    for pair in range(sizes.pairs):
        order = list(runs) if pair % 2 == 0 else list(reversed(runs))
        measured = {name: runs[name]() for name in order}
        for name, value in measured.items():
            times[name].append(value)
        ratios.append(measured["keyed"] / measured["unkeyed"])
        hand_overs.append(_hand_over_ms(bench, sizes.timeout))
    return {
        "pairs": sizes.pairs,
        "ms_per_step_median": {name: statistics.median(values) for name, values in times.items()},
        "keyed_over_unkeyed": {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        },
        "end_to_next_start_ms": {
            "median": statistics.median(hand_overs),
            "max": max(hand_overs),
        },
    }


def run_flow(
    sizes: FlowSizes, unavailable: Callable[[str], str | None], log: Callable[[str], None]
) -> dict[str, Any]:
    """The measure on Redis with a worker of its own (prefork, 2 processes)."""
    return attempt("flow control", "redis", unavailable, partial(_on_worker, sizes, log), log)


def _on_worker(sizes: FlowSizes, log: Callable[[str], None]) -> dict[str, Any]:
    config = BenchConfig(setup="redis", queue=f"ergate-bench-flow-{uuid.uuid4().hex[:8]}")
    bench = apps.build(config)
    folder = Path(tempfile.mkdtemp(prefix="ergate-bench-flow-"))
    try:
        log("flow control: keyed against unkeyed jobs, and the hand-over of a slot…")
        with worker(config, bench, folder, sizes.timeout):
            return measure(bench, sizes)
    finally:
        bench.app.close()


def table(outcome: dict[str, Any]) -> str:
    """Per-step milliseconds keyed and unkeyed, their ratio, and the hand-over time."""
    note = not_ran("flow control", outcome)
    if note is not None:
        return note
    medians = outcome["ms_per_step_median"]
    ratio = outcome["keyed_over_unkeyed"]
    hand = outcome["end_to_next_start_ms"]
    return "\n".join(
        [
            f"ms/step unkeyed {medians['unkeyed']:.2f}, under a concurrency key "
            f"{medians['keyed']:.2f}: {ratio['median']:.2f}x "
            f"({ratio['min']:.2f}-{ratio['max']:.2f} over {outcome['pairs']} pairs)",
            f"a job's end to the start of the job waiting for its slot: median "
            f"{hand['median']:.1f} ms, max {hand['max']:.1f} ms",
        ]
    )
