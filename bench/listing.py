"""What one `list_jobs` page costs with 1,000 and with 100,000 stored jobs (issue 14).

The store is filled with records as a worker leaves them (completed, failed, and scheduled
far in the future), written in bulk as `store.create` writes them (bench/stored.py), so no
broker message is sent. Then ~50 pages of
100 are read through `ErgateCelery.list_jobs`, the first page and the next one (through its
`next_cursor`) in turn: with no filter, with a status filter, with a tag filter.
Each backend gets storage of its own: Redis db 12 (flushed before and after), the PostgreSQL
schema `ergate_bench_listing` (dropped before and after).
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from celery import Celery

from .apps import POSTGRES_URL, REDIS_URL
from .report import aligned, attempt, not_ran
from .storage import flush_redis, postgres

SCHEMA = "ergate_bench_listing"
WORKFLOW = "bench_listed"
BACKENDS = ("redis", "postgresql")
#: The PostgreSQL tables a listing reads.
TABLES = ("ergate_job_list", "ergate_job_tag", "celery_taskmeta")

#: The queries timed; every one fills a page of 100 at both sizes (1 in 4 jobs is FAILED,
#: 1 in 5 carries the tag).
QUERIES: dict[str, dict[str, Any]] = {
    "no filter": {},
    "status=FAILED": {"status": "FAILED"},
    "tag shard=3": {"tags": {"shard": "3"}},
}


@dataclass(frozen=True)
class ListingSizes:
    """How many jobs are stored, and how many pages are read per query."""

    counts: tuple[int, ...] = (1_000, 100_000)
    reads: int = 50
    limit: int = 100
    #: Pages walked through `next_cursor` before starting again from the first.
    depth: int = 2


FULL = ListingSizes()
QUICK = ListingSizes(counts=(100, 1_000), reads=10)
TINY = ListingSizes(counts=(100, 400), reads=4, limit=10)


@contextlib.contextmanager
def storage(backend: str) -> Iterator[dict[str, Any]]:
    """The Celery settings of `backend`, on storage emptied before and after."""
    if backend == "redis":
        flush_redis()
        try:
            yield {"result_backend": REDIS_URL}
        finally:
            flush_redis()
        return
    postgres(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE", f"CREATE SCHEMA {SCHEMA}")
    try:
        yield {
            "result_backend": f"db+{POSTGRES_URL}",
            "database_table_schemas": {"task": SCHEMA, "group": SCHEMA},
        }
    finally:
        postgres(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def listed(x: Any) -> Any:
    """The one step of the listed workflow (never run: jobs are stored, not submitted)."""
    return x


def _job(number: int, at: datetime) -> Any:
    """Job `number` as a worker leaves it: 2 in 4 COMPLETED, 1 FAILED, 1 SCHEDULED."""
    from ergate_celery.model.job import Job, JobError
    from ergate_celery.model.job_status import JobStatus

    kind = number % 4
    fields: dict[str, Any] = {}
    if kind in (0, 1):
        fields = {"status": JobStatus.COMPLETED, "steps_completed": 1, "finished_at": at}
    elif kind == 2:
        error = JobError(type="ValueError", message=f"bad order {number}", step="step_00")
        fields = {"status": JobStatus.FAILED, "error": error, "finished_at": at}
    else:
        fields = {
            "status": JobStatus.SCHEDULED,
            "requested_start_time": at + timedelta(days=30),
        }
    return Job(
        id=str(uuid.uuid4()),
        workflow_name=WORKFLOW,
        initial_input_value={"order": f"A-{number}", "amount": number % 1000},
        submitted_at=at,
        tags={"shard": str(number % 5), "order": f"A-{number}"},
        **fields,
    )


def fill(store: Any, start: int, stop: int, base: datetime) -> None:
    """Store jobs `start` to `stop - 1`, one millisecond apart."""
    from . import stored

    stored.fill(store, (_job(n, base + timedelta(milliseconds=n)) for n in range(start, stop)))


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def time_pages(list_jobs: Callable[..., Any], query: dict[str, Any], sizes: ListingSizes) -> Any:
    """Median and p90 ms of `sizes.reads` page reads, walking `sizes.depth` pages deep."""
    runs: list[float] = []
    cursor = None
    depth = 0
    jobs = 0
    for _ in range(sizes.reads):
        start = time.perf_counter()
        page = list_jobs(limit=sizes.limit, cursor=cursor, **query)
        runs.append((time.perf_counter() - start) * 1000)
        jobs += len(page.jobs)
        depth += 1
        cursor = page.next_cursor if depth < sizes.depth else None
        if cursor is None:
            depth = 0
    return {
        "median_ms": statistics.median(runs),
        "p90_ms": _percentile(runs, 0.9),
        "jobs_per_page": jobs / sizes.reads,
    }


def run_backend(backend: str, sizes: ListingSizes, log: Callable[[str], None]) -> dict[str, Any]:
    """Fill `backend` up to each count in turn and time every query at that count."""
    from ergate_celery import ErgateCelery, Workflow

    outcome: dict[str, Any] = {"fill_s": {}, "pages": {}}
    with storage(backend) as settings:
        app = Celery("ergate_bench_listing", set_as_current=False)
        app.conf.update(broker_url="memory://", **settings)
        ergate = ErgateCelery(app)
        workflow = Workflow(unique_name=WORKFLOW)
        workflow.step(listed)
        ergate.register_workflow(workflow)
        try:
            base = datetime.now(UTC) - timedelta(days=2)
            stored = 0
            for count in sizes.counts:
                log(f"listing on {backend}: storing {count:,} jobs…")
                start = time.perf_counter()
                fill(ergate.store, stored, count, base)
                outcome["fill_s"][str(count)] = round(time.perf_counter() - start, 2)
                stored = count
                rounds = [("pages", "")]
                if backend == "postgresql":
                    # Right after a bulk fill the planner's statistics are stale until
                    # autovacuum analyzes the tables: time the pages both ways.
                    rounds.append(("pages_analyzed", " (after ANALYZE)"))
                for field, label in rounds:
                    if field == "pages_analyzed":
                        postgres(f"ANALYZE {', '.join(f'{SCHEMA}.{t}' for t in TABLES)}")
                    for name, query in QUERIES.items():
                        measured = time_pages(ergate.list_jobs, query, sizes)
                        outcome.setdefault(field, {}).setdefault(name, {})[str(count)] = measured
                        log(
                            f"listing on {backend}: {count:>7,} stored, {name}{label}: median "
                            f"{measured['median_ms']:.2f} ms, p90 {measured['p90_ms']:.2f} ms"
                        )
        finally:
            ergate.close()
            app.close()
    return outcome


def run_listing(
    sizes: ListingSizes, reachable: Callable[[str], str | None], log: Callable[[str], None]
) -> dict[str, Any]:
    """Every backend that answers; a backend that fails is recorded with its error."""
    backends = {
        backend: attempt(
            f"listing on {backend}",
            backend,
            reachable,
            partial(run_backend, backend, sizes, log),
            log,
        )
        for backend in BACKENDS
    }
    return {"sizes": asdict(sizes), "backends": backends}


def table(report: dict[str, Any]) -> str:
    """One row per backend and query: median / p90 ms of a page at each stored count."""
    counts = [str(count) for count in report["sizes"]["counts"]]
    limit = report["sizes"]["limit"]
    header = ["backend", "query"] + [f"{int(c):,} stored (median / p90 ms)" for c in counts]
    rows = [header]
    notes = []
    for backend, outcome in report["backends"].items():
        note = not_ran(backend, outcome)
        if note is not None:
            notes.append(note)
            continue
        measured_pages = [(name, by_count, "") for name, by_count in outcome["pages"].items()]
        measured_pages += [
            (name, by_count, ", after ANALYZE")
            for name, by_count in outcome.get("pages_analyzed", {}).items()
        ]
        for name, by_count, label in measured_pages:
            short = [c for c in counts if by_count.get(c, {}).get("jobs_per_page", 0) < limit]
            if short:
                notes.append(f"{backend}, {name}: pages held fewer than {limit} jobs at {short}")
            cells = [
                f"{by_count[c]['median_ms']:.2f} / {by_count[c]['p90_ms']:.2f}"
                if c in by_count
                else "-"
                for c in counts
            ]
            rows.append([backend, name + label, *cells])
        fills = ", then ".join(
            f"up to {int(c):,} in {seconds:.0f} s" for c, seconds in outcome["fill_s"].items()
        )
        notes.append(f"{backend}: stored in bulk as store.create writes, {fills}")
    lines = aligned(rows, left=2)
    return "\n".join(lines + notes)
