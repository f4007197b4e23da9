"""The measures: each runs both sides on one app and returns {name: bare, ergate, ratio}."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from celery import chain

from . import apps
from .apps import Bench
from .workers import tree_memory, worker

#: Stored states that end a bare chain / an ergate job, and whether that state is a success.
BARE_FINAL = {"SUCCESS": True, "FAILURE": False, "REVOKED": False}
JOB_FINAL = {"COMPLETED": True, "FAILED": False, "ABORTED": False, "CANCELLED": False}

#: Characters of padding in the "small" and "10 kB" return values of the bytes-per-hop measure.
SMALL_VALUE, LARGE_VALUE = 10, 10_000


@dataclass(frozen=True)
class Sizes:
    """How much work each measure does."""

    latency_runs: int = 15
    throughput_jobs: int = 2_000
    submit_calls: int = 500
    warmup: int = 3
    #: Upper bound, in seconds, on any single wait (a batch, a job, a worker start).
    timeout: float = 900.0


FULL = Sizes()
QUICK = Sizes(latency_runs=2, throughput_jobs=20, submit_calls=20, warmup=1, timeout=120.0)


# Reading many results at once --------------------------------------------------------------


class StatusReader:
    """Reads the stored state of many task or job ids, a batch per query."""

    batch = 200
    #: Coarse on purpose: a poll reads and decodes records, CPU taken from the workers being
    #: measured (more for jobs, whose records are larger); 0.25 s is under 1% of a run.
    poll_interval = 0.25

    def __init__(self, bench: Bench) -> None:
        backend: Any = bench.app.backend
        self.backend = backend
        self._engine: Any = None
        if not hasattr(backend, "client"):
            import sqlalchemy as sa

            self._engine = sa.create_engine(backend.url, **backend.engine_options)

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        """The state of each id that has a stored result."""
        if self._engine is None:
            keys = [self.backend.get_key_for_task(i) for i in ids]
            raws = self.backend.client.mget(keys)
            return {
                i: self.backend.decode(raw)["status"]
                for i, raw in zip(ids, raws, strict=True)
                if raw is not None
            }
        import sqlalchemy as sa

        table = self.backend.task_cls.__table__
        query = sa.select(table.c.task_id, table.c.status).where(table.c.task_id.in_(ids))
        with self._engine.connect() as conn:
            return {str(task_id): str(status) for task_id, status in conn.execute(query)}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def wait_all(self, ids: Sequence[str], final: dict[str, bool], timeout: float) -> int:
        """Wait until every id is in a final state; returns how many ended in failure.

        Work finishes roughly in submission order, so each poll reads from the oldest
        unfinished id on and stops at the first batch that is not all finished: a poll costs
        a query or two, not one per id, and leaves the CPU to the workers being measured.
        """
        remaining = list(ids)
        failed = 0
        deadline = time.monotonic() + timeout
        while remaining:
            unfinished: list[str] = []
            read = 0
            while read < len(remaining) and not unfinished:
                batch = remaining[read : read + self.batch]
                read += len(batch)
                states = self.states(batch)
                for i in batch:
                    state = states.get(i)
                    if state in final:
                        failed += not final[state]
                    else:
                        unfinished.append(i)
            remaining = unfinished + remaining[read:]
            if not remaining:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(remaining)} of {len(ids)} unfinished after {timeout} s")
            time.sleep(self.poll_interval)
        return failed


# Measures ----------------------------------------------------------------------------------


def _ergate(bench: Bench) -> Any:
    if bench.ergate is None:
        raise RuntimeError("this measure needs the ergate_celery side of the app")
    return bench.ergate


def _bare_chain(bench: Bench, steps: int, value: Any) -> Any:
    return chain(bench.noop.s(value), *(bench.noop.s() for _ in range(steps - 1)))


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _measure(bare: float, ergate: float, unit: str, better: str, **detail: Any) -> dict[str, Any]:
    return {
        "bare": bare,
        "ergate": ergate,
        "ratio": ergate / bare if bare else None,
        "unit": unit,
        "better": better,
        "detail": detail,
    }


def measure_submit(bench: Bench, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Client-side cost of one submission, with no worker consuming; the queue is purged."""
    ergate = _ergate(bench)
    bare: list[float] = []
    job: list[float] = []
    for index in range(sizes.warmup + sizes.submit_calls):
        start = time.perf_counter()
        bench.noop.delay(index)
        middle = time.perf_counter()
        ergate.submit_job(apps.SHORT_WORKFLOW, initial_input_value=index)
        end = time.perf_counter()
        if index >= sizes.warmup:
            bare.append((middle - start) * 1000)
            job.append((end - middle) * 1000)
    bench.app.control.purge()
    calls = sizes.submit_calls
    return {
        "submit_p50_ms": _measure(
            statistics.median(bare), statistics.median(job), "ms", "lower", calls=calls
        ),
        "submit_p99_ms": _measure(
            _percentile(bare, 0.99), _percentile(job, 0.99), "ms", "lower", calls=calls
        ),
    }


def measure_hop_latency(bench: Bench, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """One 20-step job end to end vs a bare chain of 20, alternating; medians."""
    ergate = _ergate(bench)
    steps = apps.LONG_STEPS
    bare: list[float] = []
    job: list[float] = []
    for index in range(sizes.warmup + sizes.latency_runs):
        start = time.perf_counter()
        value = (
            _bare_chain(bench, steps, index)
            .apply_async()
            .get(timeout=min(sizes.timeout, 120), interval=apps.WAIT_POLL_INTERVAL)
        )
        middle = time.perf_counter()
        submitted = ergate.submit_job(apps.LONG_WORKFLOW, initial_input_value=index)
        done = ergate.wait_for_job(submitted.id, timeout=min(sizes.timeout, 120))
        end = time.perf_counter()
        if value != index or done.status.name != "COMPLETED" or done.last_return_value != index:
            raise RuntimeError(f"wrong outcome: chain gave {value!r}, job {done!r}")
        if index >= sizes.warmup:
            bare.append((middle - start) * 1000)
            job.append((end - middle) * 1000)
    bare_ms, job_ms = statistics.median(bare), statistics.median(job)
    return {
        "hop_latency_ms": _measure(
            bare_ms / steps,
            job_ms / steps,
            "ms/hop",
            "lower",
            steps=steps,
            runs=sizes.latency_runs,
            end_to_end_median_ms={"bare": bare_ms, "ergate": job_ms},
            end_to_end_min_ms={"bare": min(bare), "ergate": min(job)},
            wait_poll_interval_s=apps.WAIT_POLL_INTERVAL,
        )
    }


def measure_throughput(bench: Bench, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """N jobs of 5 steps vs N bare chains of 5: all submitted, then all awaited.

    Runs in the order bare, ergate, ergate, bare, so that a machine getting slower or faster
    during the measure (shared hosts drift by tens of percent) weighs on both sides alike;
    each side's figure is its total steps over its total seconds.
    """
    ergate = _ergate(bench)
    steps, count = apps.SHORT_STEPS, sizes.throughput_jobs
    reader = StatusReader(bench)
    seconds: dict[str, list[float]] = {"bare": [], "ergate": []}
    submitting: dict[str, list[float]] = {"bare": [], "ergate": []}
    failed = {"bare": 0, "ergate": 0}
    try:
        for side in ("bare", "ergate", "ergate", "bare"):
            start = time.perf_counter()
            if side == "bare":
                ids = [_bare_chain(bench, steps, i).apply_async().id for i in range(count)]
                final = BARE_FINAL
            else:
                ids = [
                    str(ergate.submit_job(apps.SHORT_WORKFLOW, initial_input_value=i).id)
                    for i in range(count)
                ]
                final = JOB_FINAL
            submitting[side].append(time.perf_counter() - start)
            failed[side] += reader.wait_all(ids, final, sizes.timeout)
            seconds[side].append(time.perf_counter() - start)
    finally:
        reader.close()
    if failed["bare"] or failed["ergate"]:
        raise RuntimeError(f"{failed['bare']} chains and {failed['ergate']} jobs did not succeed")
    total = count * steps * 2
    return {
        "throughput_steps_per_s": _measure(
            total / sum(seconds["bare"]),
            total / sum(seconds["ergate"]),
            "steps/s",
            "higher",
            jobs=count,
            steps_per_job=steps,
            order="bare, ergate, ergate, bare",
            seconds=seconds,
            submitting_seconds=submitting,
        )
    }


def _captured(folder: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for path in sorted(folder.glob("capture-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line]
        path.unlink()
    return lines


def measure_bytes(bench: Bench, capture: Path, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Message body size between two steps, as a worker publishes it (5-step runs)."""
    ergate = _ergate(bench)
    steps = apps.SIZED_STEPS
    timeout = min(sizes.timeout, 120)
    results: dict[str, dict[str, Any]] = {}
    for label, size in (("small", SMALL_VALUE), ("10kB", LARGE_VALUE)):
        _captured(capture)
        first = {"size": size}
        signature = chain(bench.sized.s(first), *(bench.sized.s() for _ in range(steps - 1)))
        signature.apply_async().get(timeout=timeout, interval=apps.WAIT_POLL_INTERVAL)
        bare = [m for m in _captured(capture) if m["task"] == "bench.sized"]
        job = ergate.submit_job(apps.SIZED_WORKFLOW, initial_input_value=first)
        ergate.wait_for_job(job.id, timeout=timeout)
        steps_sent = [m for m in _captured(capture) if m["task"].startswith("ergate.")]
        if len(bare) != steps - 1 or len(steps_sent) != steps - 1:
            raise RuntimeError(f"captured {len(bare)} bare and {len(steps_sent)} step hops")
        results[f"bytes_per_hop_{label}"] = _measure(
            statistics.mean(m["body_bytes"] for m in bare),
            statistics.mean(m["body_bytes"] for m in steps_sent),
            "bytes",
            "lower",
            return_value_chars=size,
            body_bytes_per_hop={
                "bare": [m["body_bytes"] for m in bare],
                "ergate": [m["body_bytes"] for m in steps_sent],
            },
            headers_bytes_mean={
                "bare": statistics.mean(m["headers_bytes"] for m in bare),
                "ergate": statistics.mean(m["headers_bytes"] for m in steps_sent),
            },
        )
    return results


def measure_memory(bench: Bench, run_dir: Path, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """A worker with 50 extra workflows vs one holding only the no-op task, both warmed."""
    ergate = _ergate(bench)
    timeout = min(sizes.timeout, 120)
    memory: dict[str, dict[str, float]] = {}
    for side, config in (
        ("bare", replace(bench.config, bare_only=True)),
        ("ergate", replace(bench.config, many_workflows=True)),
    ):
        with worker(config, bench, run_dir, sizes.timeout) as pid:
            for index in range(10):
                bench.noop.delay(index).get(timeout=timeout, interval=apps.WAIT_POLL_INTERVAL)
            if side == "ergate":
                job = ergate.submit_job(apps.SHORT_WORKFLOW, initial_input_value=0)
                ergate.wait_for_job(job.id, timeout=timeout)
            else:
                _bare_chain(bench, apps.SHORT_STEPS, 0).apply_async().get(
                    timeout=timeout, interval=apps.WAIT_POLL_INTERVAL
                )
            time.sleep(0.5)
            memory[side] = tree_memory(pid)
    return {
        "worker_rss_mib": _measure(
            memory["bare"]["rss_mib"],
            memory["ergate"]["rss_mib"],
            "MiB",
            "lower",
            extra_workflows=apps.EXTRA_WORKFLOWS,
            steps_per_extra_workflow=apps.EXTRA_STEPS,
            pss_mib={side: values["pss_mib"] for side, values in memory.items()},
            processes={side: values["processes"] for side, values in memory.items()},
        )
    }
