"""The scale curve (issue 16): what a step, a release run, a sweep and a `list_jobs` page cost
with 1,000 / 100,000 / 1,000,000 stored jobs on Redis and 1,000 / 100,000 on PostgreSQL.

Each count gets a store of its own, filled once (bench/stored.py: the mix a store holds after
a while, written in bulk as `store.create` writes it): on Redis an app per count with its own
`ergate_index_name` on the one db, on PostgreSQL a schema per count. On Redis the counts are
then measured in turn, round after round (the first round a warm-up; each figure the median
of the rounds), so the machine's load, which drifts, weighs on every count alike; on
PostgreSQL one count after the other (see `run_backend`):

- `list_jobs`: the first page of 100 with no filter, with status=FAILED, with a workflow
  (each the median of `page_reads` reads);
- `release_due_jobs`: one run with `due` SCHEDULED jobs due (written just before it), every
  other scheduled job a month ahead; `repeats` rounds;
- `recover_stuck_jobs`: one sweep with `stuck` QUEUED jobs idle for two days, every other
  active job recent; `repeats` rounds;
- then a real `celery worker -P prefork -c 2` per store runs the released and requeued jobs,
  and the step cost is timed: one 20-step job end to end (ms per hop), and `step_jobs` jobs
  of 5 steps submitted at once (wall ms per step); `hop_runs` rounds.

Redis runs on the Redis setup of bench/apps.py (its db, flushed before and after); PostgreSQL
on the rabbitmq_postgres setup (RabbitMQ broker, `db+postgresql` backend; the schemas dropped
before and after, ANALYZEd after the fill as autovacuum would). The chart (stored jobs on a
log axis, ms on a log axis, a panel per backend) is written beside the JSON as scale.png.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.scheduling.beat import recover_stuck_jobs, release_due_jobs

from . import apps, listing, stored
from .apps import Bench, BenchConfig
from .measures import JOB_FINAL, StatusReader
from .report import aligned, attempt, error_text, not_ran
from .storage import postgres
from .workers import worker

#: The backend's name in the report, and the bench setup it runs on.
SETUPS = {"redis": "redis", "postgresql": "rabbitmq_postgres"}
#: The harness's sweep treats jobs idle for a day as stuck; the stuck ones are two days idle.
STUCK_AFTER = 86_400.0
#: The listing tables ANALYZEd after each PostgreSQL fill.
TABLES = ("celery_taskmeta", "ergate_job_index", "ergate_job_list", "ergate_job_tag")

#: Measure name: its label in the table and chart.
MEASURES = {
    "hop_ms": "step: hop of a 20-step job",
    "step_ms": "step: jobs of 5 steps, -c 2",
    "release_ms": "release_due_jobs run",
    "sweep_ms": "recover_stuck_jobs run",
    "list_ms": "list_jobs first page",
    "list_status_ms": "list_jobs status=FAILED",
    "list_workflow_ms": "list_jobs workflow=",
}
QUERIES = {
    "list_ms": {},
    "list_status_ms": {"status": "FAILED"},
    "list_workflow_ms": {"workflow": apps.LONG_WORKFLOW},
}


@dataclass(frozen=True)
class ScaleSizes:
    """The stored counts per backend, and how much each measure does at each count."""

    redis: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    postgresql: tuple[int, ...] = (1_000, 100_000)
    due: int = 100
    stuck: int = 10
    repeats: int = 5
    page_reads: int = 20
    hop_runs: int = 3
    step_jobs: int = 20
    timeout: float = 600.0


FULL = ScaleSizes()
QUICK = ScaleSizes(redis=(1_000, 10_000), postgresql=(1_000, 10_000), repeats=3, page_reads=10)
TINY = ScaleSizes(
    redis=(100, 1_000),
    postgresql=(),
    due=10,
    stuck=3,
    repeats=1,
    page_reads=3,
    hop_runs=1,
    step_jobs=4,
    timeout=60.0,
)


def _fresh(status: JobStatus, count: int, update: dict[str, Any]) -> list[Job]:
    """`count` new jobs of the 5-step workflow in `status`, submitted now."""
    now = datetime.now(UTC)
    model = stored.template(status, apps.SHORT_WORKFLOW, apps.SHORT_STEPS, now)
    return [
        model.model_copy(update={"id": str(uuid.uuid4()), "initial_input_value": n, **update})
        for n in range(count)
    ]


def time_release(bench: Bench, sizes: ScaleSizes) -> tuple[float, list[str]]:
    """Ms of one release run with `sizes.due` jobs due; the ids released."""
    ergate: Any = bench.ergate
    due = datetime.now(UTC) - timedelta(minutes=1)
    jobs = _fresh(JobStatus.SCHEDULED, sizes.due, {"requested_start_time": due})
    stored.fill(ergate.store, jobs)
    start = time.perf_counter()
    released = release_due_jobs(ergate)
    elapsed = (time.perf_counter() - start) * 1000
    if released != sizes.due:
        raise RuntimeError(f"a release run released {released} of {sizes.due} due jobs")
    return elapsed, [str(job.id) for job in jobs]


def time_sweep(bench: Bench, sizes: ScaleSizes) -> tuple[float, list[str]]:
    """Ms of one sweep with `sizes.stuck` jobs stuck; the ids requeued."""
    ergate: Any = bench.ergate
    jobs = _fresh(JobStatus.QUEUED, sizes.stuck, {})
    stored.fill(ergate.store, jobs, active_at=datetime.now(UTC) - timedelta(days=2))
    quiet = logging.getLogger("ergate_celery")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # not a warning per job recovered, as planned
    try:
        start = time.perf_counter()
        recovered = recover_stuck_jobs(ergate)
        elapsed = (time.perf_counter() - start) * 1000
    finally:
        quiet.setLevel(level)
    if recovered != sizes.stuck:
        raise RuntimeError(f"a sweep recovered {recovered} of {sizes.stuck} stuck jobs")
    return elapsed, [str(job.id) for job in jobs]


def time_steps(bench: Bench, reader: StatusReader, sizes: ScaleSizes) -> dict[str, float]:
    """Ms per hop of one 20-step job, and wall ms per step of `step_jobs` 5-step jobs."""
    ergate: Any = bench.ergate
    start = time.perf_counter()
    job = ergate.submit_job(apps.LONG_WORKFLOW, initial_input_value=0)
    done = ergate.wait_for_job(job.id, timeout=sizes.timeout)
    middle = time.perf_counter()
    if done.status is not JobStatus.COMPLETED:
        raise RuntimeError(f"the 20-step job ended {done.status.name}")
    ids = [
        str(ergate.submit_job(apps.SHORT_WORKFLOW, initial_input_value=n).id)
        for n in range(sizes.step_jobs)
    ]
    if reader.wait_all(ids, JOB_FINAL, sizes.timeout):
        raise RuntimeError("a 5-step job did not complete")
    end = time.perf_counter()
    return {
        "hop_ms": (middle - start) * 1000 / apps.LONG_STEPS,
        "step_ms": (end - middle) * 1000 / (sizes.step_jobs * apps.SHORT_STEPS),
    }


def time_pages(bench: Bench, sizes: ScaleSizes) -> dict[str, float]:
    """Median ms of the first page of each query."""
    ergate: Any = bench.ergate
    reads = listing.ListingSizes(reads=sizes.page_reads, depth=1)
    return {
        name: listing.time_pages(ergate.list_jobs, query, reads)["median_ms"]
        for name, query in QUERIES.items()
    }


def _config(backend: str, count: int, run_dir: Path) -> BenchConfig:
    # Each count has a store of its own: its own indexes on the one Redis db, its own schema
    # on PostgreSQL; so the counts can be measured in turn, round after round.
    queue = f"ergate-bench-scale-{count}-{uuid.uuid4().hex[:8]}"
    if backend == "redis":
        return BenchConfig("redis", run_dir, queue, index_name=f"bench_scale_{count}")
    schema = f"{apps.POSTGRES_SCHEMA}_{count}"
    return BenchConfig("rabbitmq_postgres", run_dir, queue, postgres_schema=schema)


@contextlib.contextmanager
def _emptied(bench: Bench) -> Iterator[None]:
    """The store's own storage, emptied before and after."""
    config = bench.config
    schema = config.postgres_schema

    def clean() -> None:
        if config.setup == "redis":
            bench.app.backend.client.flushdb()
        else:
            postgres(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    clean()
    if config.setup != "redis":
        postgres(f"CREATE SCHEMA {schema}")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            if config.setup != "redis":  # RabbitMQ keeps a durable queue after its consumers
                with bench.app.connection_for_write() as conn:
                    conn.default_channel.queue_delete(config.queue)
        clean()


def _backend(bench: Bench) -> str:
    return next(name for name, setup in SETUPS.items() if setup == bench.config.setup)


def _redis_mib(bench: Bench) -> float:
    return int(bench.app.backend.client.info("memory")["used_memory"]) / 2**20


def _fill(bench: Bench, count: int, outcome: dict[str, Any], log: Callable[[str], None]) -> None:
    ergate: Any = bench.ergate
    log(f"scale on {_backend(bench)}: storing {count:,} jobs…")
    redis = bench.config.setup == "redis"
    before = _redis_mib(bench) if redis else 0.0
    start = time.perf_counter()
    stored.fill(ergate.store, stored.mixed_jobs(0, count, datetime.now(UTC) - timedelta(days=2)))
    outcome["fill_s"][str(count)] = round(time.perf_counter() - start, 2)
    if redis:
        outcome["redis_used_mib"][str(count)] = round(_redis_mib(bench) - before, 1)
    else:
        schema = bench.config.postgres_schema
        postgres(f"ANALYZE {', '.join(f'{schema}.{table}' for table in TABLES)}")


def run_backend(
    backend: str, counts: tuple[int, ...], sizes: ScaleSizes, log: Callable[[str], None]
) -> dict[str, Any]:
    """Fill a store per count, then measure the counts in turn, round after round (a first
    round as warm-up), so the machine's drifting load weighs on every count alike.

    On PostgreSQL the counts are measured one after the other: Celery's database backend
    sets its schema on the one `Task` model class of the process, so two schemas cannot be
    open in one process at once.
    """
    outcome: dict[str, Any] = {"fill_s": {}, "measures": {name: {} for name in MEASURES}}
    if backend == "redis":
        outcome["redis_used_mib"] = {}
        outcome["order"] = "interleaved rounds over every count"
        groups = [counts]
    else:
        outcome["order"] = "one count after the other"
        groups = [(count,) for count in counts]
    started = time.perf_counter()
    try:
        for group in groups:
            samples = _measure_together(backend, group, sizes, log, outcome)
            for name, by_count in samples.items():
                for count, values in by_count.items():
                    outcome["measures"][name][str(count)] = statistics.median(values)
    finally:
        outcome["wall_s"] = round(time.perf_counter() - started, 1)
    for count in counts:
        log(
            f"scale on {backend}: {count:>9,} stored: "
            + ", ".join(f"{name} {by[str(count)]:.2f}" for name, by in outcome["measures"].items())
        )
    return outcome


def _measure_together(
    backend: str,
    counts: tuple[int, ...],
    sizes: ScaleSizes,
    log: Callable[[str], None],
    outcome: dict[str, Any],
) -> dict[str, dict[int, list[float]]]:
    """Every measure's samples at each of `counts`, whose stores are open side by side."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"ergate-bench-scale-{backend}-"))
    samples: dict[str, dict[int, list[float]]] = {m: {c: [] for c in counts} for m in MEASURES}
    backlog: dict[int, list[str]] = {count: [] for count in counts}
    benches: dict[int, Bench] = {}
    try:
        with contextlib.ExitStack() as stack:
            for count in counts:
                bench = benches[count] = apps.build(_config(backend, count, run_dir))
                bench.app.conf.ergate_stuck_after = STUCK_AFTER
                stack.callback(bench.app.close)
                stack.enter_context(_emptied(bench))
            for count, bench in benches.items():
                _fill(bench, count, outcome, log)
            log(f"scale on {backend}: release, sweep and list_jobs, {sizes.repeats} rounds…")
            for round_number in range(1 + sizes.repeats):
                for count, bench in benches.items():
                    measured = time_pages(bench, sizes)
                    measured["release_ms"], released = time_release(bench, sizes)
                    measured["sweep_ms"], requeued = time_sweep(bench, sizes)
                    backlog[count] += released + requeued
                    for name, value in measured.items():
                        if round_number:
                            samples[name][count].append(value)
            readers = {count: StatusReader(bench) for count, bench in benches.items()}
            for reader in readers.values():
                stack.callback(reader.close)
            for count, bench in benches.items():
                stack.enter_context(worker(bench.config, bench, run_dir, sizes.timeout))
                # The released and requeued jobs run first, so the queue is empty after.
                if readers[count].wait_all(backlog[count], JOB_FINAL, sizes.timeout):
                    raise RuntimeError("a released or requeued job did not complete")
            log(f"scale on {backend}: step cost, {sizes.hop_runs} rounds…")
            for round_number in range(1 + sizes.hop_runs):
                for count, bench in benches.items():
                    for name, value in time_steps(bench, readers[count], sizes).items():
                        if round_number:
                            samples[name][count].append(value)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return samples


def run_scale(
    sizes: ScaleSizes,
    unavailable: Callable[[str], str | None],
    log: Callable[[str], None],
    results_dir: Path,
) -> dict[str, Any]:
    """Every backend whose services answer, then the chart; a failure is recorded."""
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "sizes": asdict(sizes),
    }
    report["backends"] = {
        backend: attempt(
            f"scale on {backend}",
            setup,
            unavailable,
            partial(run_backend, backend, getattr(sizes, backend), sizes, log),
            log,
        )
        for backend, setup in SETUPS.items()
        if getattr(sizes, backend)  # no stored counts: not measured
    }
    try:
        report["chart"] = str(chart(report, results_dir / "scale.png"))
    except Exception as exc:
        report["chart_error"] = error_text(exc)
        log(f"scale: no chart ({report['chart_error']})")
    return report


def _label(name: str) -> str:
    return MEASURES[name] + (apps.LONG_WORKFLOW if name == "list_workflow_ms" else "")


def chart(report: dict[str, Any], path: Path) -> Path:
    """Draw one panel per backend that ran: ms against stored jobs, a line per measure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")

    ran = {b: o for b, o in report["backends"].items() if o["status"] == "ran"}
    if not ran:
        raise RuntimeError("no backend ran")
    figure, axes = plt.subplots(
        1, len(ran), figsize=(6.5 * len(ran), 6), sharey=True, squeeze=False
    )
    for axis, (backend, outcome) in zip(axes[0], ran.items(), strict=True):
        for name, by_count in outcome["measures"].items():
            counts = sorted(int(c) for c in by_count)
            axis.plot(counts, [by_count[str(c)] for c in counts], marker="o", label=_label(name))
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(plain)
        axis.set_xlabel("stored jobs")
        axis.set_title(f"{backend} (ms, log scale)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("ms")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize="small")
    figure.suptitle(f"ergate_celery scale curve, {report['date']}")
    figure.tight_layout(rect=(0, 0.14, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def table(report: dict[str, Any]) -> str:
    """One row per measure, backend and stored count: ms, and the ratio to the first count."""
    rows = [["measure", "backend", "stored jobs", "ms", "vs first"]]
    notes = []
    for name in MEASURES:
        for backend, outcome in report["backends"].items():
            if outcome["status"] != "ran":
                continue
            by_count = outcome["measures"][name]
            counts = sorted(int(c) for c in by_count)
            for count in counts:
                value, first = by_count[str(count)], by_count[str(counts[0])]
                ratio = f"{value / first:.2f}x" if first else "-"
                rows.append([_label(name), backend, f"{count:,}", f"{value:.2f}", ratio])
    for backend, outcome in report["backends"].items():
        note = not_ran(backend, outcome)
        if note is not None:
            notes.append(note)
            continue
        fills = ", ".join(f"{int(c):,} in {s:.0f} s" for c, s in outcome["fill_s"].items())
        notes.append(f"{backend}: filled {fills}; {outcome['wall_s']:.0f} s in all")
        if "redis_used_mib" in outcome:
            memory = ", ".join(
                f"{int(c):,}: {m:,.0f} MiB" for c, m in outcome["redis_used_mib"].items()
            )
            notes.append(f"{backend}: used_memory after each fill: {memory}")
    sizes = report["sizes"]
    notes.append(
        f"release: {sizes['due']} due; sweep: {sizes['stuck']} stuck; step: a 20-step job, "
        f"and {sizes['step_jobs']} jobs x 5 steps at once (wall ms per step)"
    )
    if "chart" in report:
        notes.append(f"chart: {report['chart']}")
    lines = aligned(rows, left=2)
    return "\n".join(lines + notes)
