"""The measures: each runs both sides on one app and returns {name: bare, ergate, ratio}."""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from celery import chain

from . import apps
from .apps import Bench
from .pairs import run_pairs, single, summary
from .workers import tree_memory, worker

Log = Callable[[str], None]

#: Stored states that end a bare chain / an ergate job, and whether that state is a success.
BARE_FINAL = {"SUCCESS": True, "FAILURE": False, "REVOKED": False}
JOB_FINAL = {"COMPLETED": True, "FAILED": False, "ABORTED": False, "CANCELLED": False}

#: Characters of padding in the "small" and "10 kB" return values of the bytes-per-hop measure.
SMALL_VALUE, LARGE_VALUE = 10, 10_000


@dataclass(frozen=True)
class Sizes:
    """How much work each measure does; the hop latency, throughput and submit measures run
    `pairs` interleaved bare/ergate pairs, with the per-side amounts below in each pair."""

    pairs: int = 5
    #: 20-step runs per side and pair; the side's sample is their median.
    latency_runs: int = 3
    #: 5-step jobs (and bare chains) per side and pair.
    throughput_jobs: int = 2_000
    #: Calls per side and pair; the side's sample is their p50 (and p99).
    submit_calls: int = 100
    warmup: int = 3
    #: Upper bound, in seconds, on any single wait (a batch, a job, a worker start).
    timeout: float = 900.0
    #: Also take the measures done once (bytes per hop, worker memory), three worker starts.
    once: bool = True


#: The full run, per setup: 2,000 jobs per side and pair where a side takes under a minute
#: (Redis); fewer where steps are slower, so that all of `make bench` stays near 20 minutes.
FULL: dict[str, Sizes] = {
    "redis": Sizes(pairs=5, throughput_jobs=2_000),
    "redis_c1": Sizes(pairs=5, throughput_jobs=500),
    "rabbitmq_postgres": Sizes(pairs=5, throughput_jobs=400),
    "django_db": Sizes(pairs=5, throughput_jobs=200),
    "embedded": Sizes(pairs=5, throughput_jobs=200),
}
QUICK = Sizes(latency_runs=1, throughput_jobs=20, submit_calls=20, warmup=1, timeout=120.0)
#: For the smoke tests only: two pairs are no measure, they check that pairs work.
TINY = Sizes(pairs=2, latency_runs=1, throughput_jobs=4, submit_calls=4, warmup=1, timeout=60.0)
#: The smoke tests of the other setups: the measures taken once are the same code everywhere.
TINY_PAIRED = replace(TINY, once=False)


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
        self._django = hasattr(backend, "TaskModel")
        if not hasattr(backend, "client") and not self._django:
            import sqlalchemy as sa

            self._engine = sa.create_engine(backend.url, **backend.engine_options)

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        """The state of each id that has a stored result."""
        if self._django:
            rows = self.backend.TaskModel.objects.filter(task_id__in=ids)
            return {str(i): str(state) for i, state in rows.values_list("task_id", "status")}
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


def _timed(calls: int, call: Callable[[int], Any]) -> list[float]:
    times: list[float] = []
    for index in range(calls):
        start = time.perf_counter()
        call(index)
        times.append((time.perf_counter() - start) * 1000)
    return times


class InsertReference:
    """One INSERT + COMMIT of a ~1 kB row through psycopg on an open connection, into a
    scratch table of the bench schema: the floor of a submission that must be durable."""

    body = "x" * 1_000

    def __init__(self) -> None:
        import psycopg

        self.table = f"{apps.POSTGRES_SCHEMA}.bench_insert_reference"
        self.conn = psycopg.connect(apps.POSTGRES_URL)
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (id text PRIMARY KEY, body text NOT NULL)"
        )
        self.conn.commit()

    def insert(self, index: int) -> None:
        self.conn.execute(
            f"INSERT INTO {self.table} (id, body) VALUES (%s, %s)", (uuid.uuid4().hex, self.body)
        )
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def measure_submit(bench: Bench, sizes: Sizes, log: Log | None = None) -> dict[str, dict[str, Any]]:
    """Client-side cost of one submission, with no worker consuming; the queue is purged.

    `submit_job()` vs `noop.delay()`, p50 and p99 of each side's calls in each pair. On the
    PostgreSQL setups a third sample in each pair times one INSERT transaction through
    psycopg, and the ergate p50 is also reported against that INSERT plus the `delay()`.
    """
    ergate = _ergate(bench)
    calls = sizes.submit_calls
    samples: dict[str, Callable[[], list[float]]] = {
        "bare": lambda: _timed(calls, bench.noop.delay),
        "ergate": lambda: _timed(
            calls, lambda i: ergate.submit_job(apps.SHORT_WORKFLOW, initial_input_value=i)
        ),
    }
    reference = InsertReference() if bench.config.setup in apps.POSTGRES_SETUPS else None
    try:
        if reference is not None:
            samples["insert"] = lambda: _timed(calls, reference.insert)
        _timed(sizes.warmup, bench.noop.delay)
        _timed(
            sizes.warmup, lambda i: ergate.submit_job(apps.SHORT_WORKFLOW, initial_input_value=i)
        )
        if reference is not None:
            _timed(sizes.warmup, reference.insert)
        taken = run_pairs(sizes.pairs, samples, log)
    finally:
        if reference is not None:
            reference.close()
    bench.app.control.purge()
    p50 = {side: [statistics.median(times) for times in taken[side]] for side in taken}
    p99 = {side: [_percentile(times, 0.99) for times in taken[side]] for side in taken}
    results = {
        "submit_p50_ms": summary(p50["bare"], p50["ergate"], "ms", "lower", calls=calls),
        "submit_p99_ms": summary(p99["bare"], p99["ergate"], "ms", "lower", calls=calls),
    }
    if reference is not None:
        floor = [i + d for i, d in zip(p50["insert"], p50["bare"], strict=True)]
        results["submit_p50_vs_insert_publish_ms"] = summary(
            floor,
            p50["ergate"],
            "ms",
            "lower",
            calls=calls,
            reference="p50 of one INSERT + COMMIT of a 1 kB row (psycopg, open connection) "
            "plus p50 of noop.delay(), both in the same pair",
            insert_p50_by_pair=p50["insert"],
            delay_p50_by_pair=p50["bare"],
        )
    return results


def measure_hop_latency(
    bench: Bench, sizes: Sizes, log: Log | None = None
) -> dict[str, dict[str, Any]]:
    """One 20-step job end to end vs a bare chain of 20: per pair, each side's median of
    `latency_runs` runs, divided by 20."""
    ergate = _ergate(bench)
    steps = apps.LONG_STEPS
    timeout = min(sizes.timeout, 120)

    def bare_run(index: int) -> None:
        value = (
            _bare_chain(bench, steps, index)
            .apply_async()
            .get(timeout=timeout, interval=apps.WAIT_POLL_INTERVAL)
        )
        if value != index:
            raise RuntimeError(f"wrong outcome: chain gave {value!r}")

    def job_run(index: int) -> None:
        submitted = ergate.submit_job(apps.LONG_WORKFLOW, initial_input_value=index)
        done = ergate.wait_for_job(submitted.id, timeout=timeout)
        if done.status.name != "COMPLETED" or done.last_return_value != index:
            raise RuntimeError(f"wrong outcome: job {done!r}")

    _timed(sizes.warmup, bare_run)
    _timed(sizes.warmup, job_run)
    taken = run_pairs(
        sizes.pairs,
        {
            "bare": lambda: _timed(sizes.latency_runs, bare_run),
            "ergate": lambda: _timed(sizes.latency_runs, job_run),
        },
        log,
    )
    per_hop = {side: [statistics.median(runs) / steps for runs in taken[side]] for side in taken}
    return {
        "hop_latency_ms": summary(
            per_hop["bare"],
            per_hop["ergate"],
            "ms/hop",
            "lower",
            steps=steps,
            runs_per_side_and_pair=sizes.latency_runs,
            end_to_end_ms=taken,
            wait_poll_interval_s=apps.WAIT_POLL_INTERVAL,
        )
    }


def measure_throughput(
    bench: Bench, sizes: Sizes, log: Log | None = None
) -> dict[str, dict[str, Any]]:
    """N jobs of 5 steps vs N bare chains of 5, all submitted then all awaited, per side and
    pair; a side's sample is its steps over its seconds, submission included."""
    ergate = _ergate(bench)
    steps, count = apps.SHORT_STEPS, sizes.throughput_jobs
    reader = StatusReader(bench)
    seconds: dict[str, list[float]] = {"bare": [], "ergate": []}
    submitting: dict[str, list[float]] = {"bare": [], "ergate": []}

    def run(side: str, jobs: int, warm: bool = False) -> float:
        start = time.perf_counter()
        if side == "bare":
            ids = [_bare_chain(bench, steps, i).apply_async().id for i in range(jobs)]
            final = BARE_FINAL
        else:
            ids = [
                str(ergate.submit_job(apps.SHORT_WORKFLOW, initial_input_value=i).id)
                for i in range(jobs)
            ]
            final = JOB_FINAL
        submitted = time.perf_counter() - start
        failed = reader.wait_all(ids, final, sizes.timeout)
        if failed:
            raise RuntimeError(f"{failed} of {jobs} {side} runs did not succeed")
        elapsed = time.perf_counter() - start
        if not warm:
            seconds[side].append(elapsed)
            submitting[side].append(submitted)
        return jobs * steps / elapsed

    try:
        for side in ("bare", "ergate"):
            run(side, max(sizes.warmup, min(20, count)), warm=True)
        taken = run_pairs(
            sizes.pairs,
            {"bare": lambda: run("bare", count), "ergate": lambda: run("ergate", count)},
            log,
        )
    finally:
        reader.close()
    return {
        "throughput_steps_per_s": summary(
            taken["bare"],
            taken["ergate"],
            "steps/s",
            "higher",
            jobs=count,
            steps_per_job=steps,
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
        results[f"bytes_per_hop_{label}"] = single(
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
        "worker_rss_mib": single(
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
