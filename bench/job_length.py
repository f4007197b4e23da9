"""Does a step cost more the more steps its job has run? A step of a 100-step job against a
step of a 5-step job, end to end, next to bare chains of the same lengths (Redis).

Each pair runs a short and a long job (and a short and a long chain) back to back, the order
alternating from pair to pair; the figure is the median over pairs of the per-step time of
the long one over the short one.
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

from celery import chain

from . import apps
from .apps import Bench, BenchConfig
from .report import attempt, not_ran
from .workers import worker


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
    start = time.perf_counter()
    job = bench.ergate.submit_job(workflow, initial_input_value=1)
    done = bench.ergate.wait_for_job(job.id, timeout=timeout)
    elapsed = time.perf_counter() - start
    if done.status.name != "COMPLETED" or done.steps_completed != steps:
        raise RuntimeError(f"wrong outcome for {workflow}: {done!r}")
    return elapsed * 1000 / steps


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
    """The measure on Redis with a worker of its own (prefork, 2 processes)."""
    return attempt("job length", "redis", unavailable, partial(_on_worker, sizes, log), log)


def _on_worker(sizes: LengthSizes, log: Callable[[str], None]) -> dict[str, Any]:
    config = BenchConfig(setup="redis", queue=f"ergate-bench-length-{uuid.uuid4().hex[:8]}")
    bench = apps.build(config)
    folder = Path(tempfile.mkdtemp(prefix="ergate-bench-length-"))
    try:
        log("job length: 5-step against 100-step jobs…")
        with worker(config, bench, folder, sizes.timeout):
            return measure(bench, sizes)
    finally:
        bench.app.close()


def table(outcome: dict[str, Any]) -> str:
    """Per-step milliseconds of short and long runs, and the long/short ratio per side."""
    note = not_ran("job length", outcome)
    if note is not None:
        return note
    medians = outcome["ms_per_step_median"]
    steps = outcome["steps"]
    lines = [
        f"side    ms/step ({steps['short']} steps)  ms/step ({steps['long']} steps)  "
        f"long/short (median, min-max of {outcome['pairs']} pairs)"
    ]
    for side in ("bare", "ergate"):
        ratio = outcome["long_over_short"][side]
        lines.append(
            f"{side:6}  {medians[f'{side}_short']:17.2f}  {medians[f'{side}_long']:18.2f}  "
            f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"
        )
    return "\n".join(lines)
