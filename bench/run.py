"""Benchmark ergate_celery against bare Celery on the same app, broker, backend and workers.

    python -m bench.run [--quick] [--setups redis,redis_c1,rabbitmq_postgres,django_db,embedded]
                        [--only compare,length,nodes,listing,waiting,scale,dbos,fan_out,flow]

`compare`: for each setup whose services answer on loopback (all by default), the harness
starts its own worker subprocesses (prefork) and measures bare Celery vs ergate_celery:

- hop latency: one 20-step job, submit to final, vs a `chain` of 20 no-op tasks;
- throughput: N jobs of 5 no-op steps vs N chains of 5, submitted then awaited (steps/s);
- submit latency: `submit_job()` vs `noop.delay()` (p50, p99), with no worker consuming; on
  the PostgreSQL setups also against one INSERT transaction (psycopg) plus a `delay()`;
- bytes per hop: the JSON body of a message published by a worker between two steps, for a
  small and a 10 kB return value (captured by a `before_task_publish` receiver);
- worker memory: RSS of a worker and its pool processes with 50 extra workflows registered
  vs a worker holding only the no-op task.

The first three run as interleaved bare/ergate pairs (bench/pairs.py; at least 5 per setup
in the full run, sizes per setup in `measures.FULL`) and report the median of each side, the
median ratio of the pairs and its spread; bytes and memory are measured once.

Setups (bench/apps.py): `redis` (`-c 2`; bare tasks acknowledge early, Celery's default,
steps late, ergate_celery's), `redis_c1` (`-c 1 --prefetch-multiplier 1`, late
acknowledgement on both sides), `rabbitmq_postgres` (`db+postgresql`), `django_db` (the
django-db backend on PostgreSQL, RabbitMQ as broker as in a typical Django deployment; both
sides store their results in django-celery-results' table, as a Django project using
ergate_celery does) and `embedded` (the file broker and SQLite of `make demo`).

`length` (bench/job_length.py): a step of a 100-step job against a step of a 5-step job,
next to bare chains of 100 and 5 links (Redis, and RabbitMQ + PostgreSQL). `nodes`
(bench/nodes.py): throughput with 1, 2 and 4 worker nodes on Redis, with each component's
CPU seconds. `listing`
(bench/listing.py): one `list_jobs` page with 1,000 and 100,000 stored jobs, on Redis and
PostgreSQL. `waiting` (bench/waiting.py): sleeping jobs
released per second by a release run, and wake-up lateness with 10,000 sleeping jobs. `scale`
(bench/scale.py): step, release, sweep and `list_jobs` costs against the stored-job count
(1,000 to 1,000,000), with a chart in `bench/results/scale.png`. `dbos` (bench/dbos_peer.py):
DBOS Transact as a peer on the same PostgreSQL, its per-step latency and throughput against
ergate_celery's on Redis and on RabbitMQ + PostgreSQL, interleaved, ratios ergate ÷ DBOS.
`fan_out` (bench/fan_out.py): children created per second and the time from the last child's
end to the join's start for 100, 1,000 and 10,000 children, beside a Celery `chord` of the
same width, on Redis and PostgreSQL.
`flow` (bench/flow.py): a step under a concurrency key against one without, and a job's end
to the start of the job that waited for its slot (Redis).

`ERGATE_BENCH_ACKS_LATE=0` (or `1`) runs the steps with that `ergate_acks_late`.

It prints one table per setup and part and writes the numbers to
`bench/results/<UTC date-time>.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from ergate_celery.settings import ErgateSettings

from . import apps, dbos_peer, fan_out, flow, job_length, listing, nodes, scale, waiting
from .apps import Bench, BenchConfig
from .measures import (
    FULL,
    QUICK,
    TINY_PAIRED,
    Sizes,
    measure_bytes,
    measure_hop_latency,
    measure_memory,
    measure_submit,
    measure_throughput,
)
from .report import error_text, machine, table, versions, write_report
from .storage import flush_redis, postgres
from .workers import stop_all, worker

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARTS = ("compare", "length", "nodes", "listing", "waiting", "scale", "dbos", "fan_out", "flow")
#: The parts that run on Redis only, and do not check that it answers themselves.
REDIS_PARTS = frozenset({"nodes", "waiting"})
RABBITMQ_SETUPS = frozenset({"rabbitmq_postgres", "django_db"})
#: A measure: its results by name.
Measure = Callable[[], dict[str, dict[str, Any]]]

SERVICES = {
    "redis": [("Redis", "127.0.0.1", 6379)],
    "redis_c1": [("Redis", "127.0.0.1", 6379)],
    "rabbitmq_postgres": [("RabbitMQ", "127.0.0.1", 5672), ("PostgreSQL", "127.0.0.1", 5432)],
    "django_db": [("RabbitMQ", "127.0.0.1", 5672), ("PostgreSQL", "127.0.0.1", 5432)],
    "embedded": [],
    "postgresql": [("PostgreSQL", "127.0.0.1", 5432)],
}


# Services and setups -----------------------------------------------------------------------


def reachable(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port within a second."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def unavailable(setup: str) -> str | None:
    """Why `setup` cannot run here, or None."""
    for name, host, port in SERVICES[setup]:
        if not reachable(host, port):
            return f"{name} is not reachable on {host}:{port}"
    if setup == "embedded":
        try:
            from ergate_celery.embedded.broker import embedded_broker_settings  # noqa: F401
        except ImportError as exc:
            return f"ergate_celery.embedded.broker is not importable ({exc})"
    if setup == "django_db":
        try:
            import django  # noqa: F401
            import django_celery_results  # noqa: F401
        except ImportError as exc:
            return f"Django or django-celery-results is not installed ({exc})"
    return None


@contextlib.contextmanager
def prepared(setup: str, folder: Path) -> Iterator[None]:
    """Empty the setup's own storage before and after: Redis db 12, the `ergate_bench`
    schema, the embedded folder. Nothing else is touched. On django_db, Django's migrations
    are applied to the new schema."""
    schema = apps.POSTGRES_SCHEMA

    def clean() -> None:
        if setup in ("redis", "redis_c1"):
            flush_redis()
        elif setup in apps.POSTGRES_SETUPS:
            if setup == "django_db" and "django.db" in sys.modules:
                from django.db import connections

                connections.close_all()
            postgres(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    clean()
    if setup in apps.POSTGRES_SETUPS:
        postgres(f"CREATE SCHEMA {schema}")
    if setup == "django_db":
        from django.core.management import call_command

        apps.setup_django()
        call_command("migrate", verbosity=0)
    try:
        yield
    finally:
        clean()


def _delete_queue(bench: Bench) -> None:
    # RabbitMQ keeps a durable queue after its consumers leave; Redis is flushed anyway.
    if bench.config.setup not in RABBITMQ_SETUPS:
        return
    with bench.app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        channel.queue_delete(bench.config.queue)


# One setup ---------------------------------------------------------------------------------


def _server_version(bench: Bench) -> dict[str, str]:
    versions: dict[str, str] = {}
    with contextlib.suppress(Exception):
        if bench.config.setup in ("redis", "redis_c1"):
            import redis

            client = redis.Redis.from_url(apps.REDIS_URL)
            versions["redis_server"] = str(client.info("server")["redis_version"])
            client.close()
        elif bench.config.setup in RABBITMQ_SETUPS:
            import sqlalchemy as sa

            with bench.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
                properties = conn.connection.server_properties
                versions["rabbitmq_server"] = str(properties.get("version", "?"))
            engine = sa.create_engine(apps.POSTGRES_URL)
            with engine.connect() as db:
                version = db.execute(sa.text("SHOW server_version")).scalar()
                versions["postgresql_server"] = str(version)
            engine.dispose()
    return versions


def _run_group(
    bench: Bench,
    worker_config: BenchConfig | None,
    measures: list[tuple[str, Measure]],
    run_dir: Path,
    sizes: Sizes,
    outcome: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    """Run `measures` on one worker of `worker_config` (none if None); record each error."""
    setup = bench.config.setup

    def failed(title: str, exc: Exception) -> None:
        outcome["errors"][title] = error_text(exc)
        log(f"{setup}: {title} failed: {error_text(exc)}")

    try:
        with contextlib.ExitStack() as stack:
            if worker_config is not None:
                stack.enter_context(worker(worker_config, bench, run_dir, sizes.timeout))
            for title, measure in measures:
                log(f"{setup}: {title}…")
                try:
                    outcome["measures"].update(measure())
                except Exception as exc:
                    failed(title, exc)
    except Exception as exc:  # the worker did not start
        for title, _ in measures:
            failed(title, exc)


def setup_notes(setup: str, ergate_acks_late: bool | None = None) -> dict[str, Any]:
    """How a setup's workers run and acknowledge, for the JSON report."""
    options = apps.WORKER_OPTIONS.get(setup, apps.DEFAULT_WORKER_OPTIONS)
    ergate = ErgateSettings().acks_late if ergate_acks_late is None else ergate_acks_late
    return {
        "worker": " ".join(("celery worker -P prefork", *options)),
        "acks_late": {"bare": setup in apps.BARE_ACKS_LATE, "ergate": ergate},
        "broker_and_backend": {
            "redis": "Redis / Redis",
            "redis_c1": "Redis / Redis",
            "rabbitmq_postgres": "RabbitMQ / db+postgresql (SQLAlchemy)",
            "django_db": "RabbitMQ / django-db (django-celery-results) on PostgreSQL",
            "embedded": "files (ergate embedded broker) / db+sqlite",
        }[setup],
    }


def run_setup(setup: str, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    """All measures on one setup; a measure that fails is recorded with its error."""
    reason = unavailable(setup)
    if reason is not None:
        log(f"{setup}: skipped ({reason})")
        return {"status": "skipped", "reason": reason}
    run_dir = Path(tempfile.mkdtemp(prefix=f"ergate-bench-{setup}-"))
    queue = f"ergate-bench-{uuid.uuid4().hex[:12]}"
    # ERGATE_BENCH_ACKS_LATE=0|1 sets the steps' `ergate_acks_late` (default: the library's).
    acks_late = BenchConfig.from_env().ergate_acks_late
    config = BenchConfig(setup=setup, folder=run_dir, queue=queue, ergate_acks_late=acks_late)
    began = time.monotonic()
    outcome: dict[str, Any] = {
        "status": "ran",
        "queue": queue,
        "sizes": asdict(sizes),
        **setup_notes(setup, acks_late),
        # Other processes on the machine skew every number: the 1-minute load, before/after.
        "load_average": {"start": os.getloadavg()[0]},
        "measures": {},
        "errors": {},
    }
    bench: Bench | None = None
    try:
        with prepared(setup, run_dir):
            current = bench = apps.build(config)
            outcome["servers"] = _server_version(current)
            capture = run_dir / "capture"

            def progress(title: str) -> Callable[[str], None]:
                return lambda message: log(f"{setup}: {title}: {message}")

            # Measures grouped by the worker they need (None: no worker); hop latency and
            # throughput share one, as a worker start costs seconds.
            groups: list[tuple[BenchConfig | None, list[tuple[str, Measure]]]] = [
                (None, [("submit", lambda: measure_submit(current, sizes, progress("submit")))]),
                (
                    config,
                    [
                        (
                            "hop latency",
                            lambda: measure_hop_latency(current, sizes, progress("hop latency")),
                        ),
                        (
                            "throughput",
                            lambda: measure_throughput(current, sizes, progress("throughput")),
                        ),
                    ],
                ),
            ]
            if sizes.once:
                groups += [
                    (
                        replace(config, capture=capture),
                        [("bytes per hop", lambda: measure_bytes(current, capture, sizes))],
                    ),
                    (None, [("worker memory", lambda: measure_memory(current, run_dir, sizes))]),
                ]
            for worker_config, measures in groups:
                _run_group(current, worker_config, measures, run_dir, sizes, outcome, log)
            _delete_queue(current)
    except Exception as exc:
        outcome["errors"]["setup"] = error_text(exc)
        log(f"{setup}: failed: {error_text(exc)}")
    finally:
        stop_all()
        outcome["load_average"]["end"] = os.getloadavg()[0]
        outcome["seconds"] = round(time.monotonic() - began, 1)
        if bench is not None:
            bench.app.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return outcome


# Report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartSizes:
    """The sizes of the listing and waiting parts."""

    listing: listing.ListingSizes = listing.FULL
    waiting: waiting.WaitingSizes = waiting.FULL
    nodes: nodes.NodeSizes = nodes.FULL
    length: job_length.LengthSizes = job_length.FULL
    scale: scale.ScaleSizes = scale.FULL
    dbos: dbos_peer.PeerSizes = dbos_peer.FULL
    fan_out: fan_out.FanOutSizes = fan_out.FULL
    flow: flow.FlowSizes = flow.FULL


def _loaded(part: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    # Other processes on the machine skew every number: the 1-minute load, before/after.
    start = os.getloadavg()[0]
    outcome = part()
    return {**outcome, "load_average": {"start": start, "end": os.getloadavg()[0]}}


def _on_redis(
    name: str, part: Callable[[], dict[str, Any]], log: Callable[[str], None]
) -> dict[str, Any]:
    # A part that runs on Redis only: skipped, with the reason, when Redis does not answer.
    reason = unavailable("redis")
    if reason is not None:
        log(f"{name}: skipped ({reason})")
        return {"status": "skipped", "reason": reason}
    return _loaded(part)


def run_bench(
    setups: Sequence[str],
    sizes: Sizes | Mapping[str, Sizes],
    results_dir: Path = RESULTS_DIR,
    log: Callable[[str], None] = print,
    parts: Sequence[str] = ("compare",),
    part_sizes: PartSizes | None = None,
) -> tuple[dict[str, Any], Path]:
    """Run the `parts` asked for (`compare`: every measure on every setup), then write the
    JSON report; returns it and its path. `sizes` is one for all setups or one per setup."""
    part_sizes = part_sizes or PartSizes()
    began = time.monotonic()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "notes": {
            "ratio": "ergate / bare; for paired measures the median of the pairs' ratios, "
            "with their range (ratio_min, ratio_max) and interquartile range (ratio_iqr); "
            "bare and ergate are the medians of each side's samples",
            "pairs": "each pair takes one sample of each side back to back; bare goes first "
            "in even pairs, ergate in odd ones",
            "worker": "celery worker -P prefork (options per setup) --without-gossip "
            "--without-mingle --without-heartbeat, one per measure, on a queue of the run's "
            "own",
            "wait": "on Redis, wait_for_job and AsyncResult.get are woken by a publish; "
            f"elsewhere they read every {apps.WAIT_POLL_INTERVAL} s",
        },
        "setups": {},
    }
    try:
        if "compare" in parts:
            for setup in setups:
                sized = sizes if isinstance(sizes, Sizes) else sizes[setup]
                report["setups"][setup] = run_setup(setup, sized, log)
        others: dict[str, Callable[[], dict[str, Any]]] = {
            "length": lambda: job_length.run_job_length(part_sizes.length, unavailable, log),
            "nodes": lambda: nodes.run_nodes(part_sizes.nodes, log),
            "listing": lambda: listing.run_listing(part_sizes.listing, unavailable, log),
            "waiting": lambda: waiting.run_waiting(part_sizes.waiting, log),
            "scale": lambda: scale.run_scale(part_sizes.scale, unavailable, log, results_dir),
            "dbos": lambda: dbos_peer.run_dbos_peer(part_sizes.dbos, unavailable, log),
            "fan_out": lambda: fan_out.run_fan_out(part_sizes.fan_out, unavailable, log),
            "flow": lambda: flow.run_flow(part_sizes.flow, unavailable, log),
        }
        for name, part in others.items():
            if name in parts:
                report[name] = _on_redis(name, part, log) if name in REDIS_PARTS else _loaded(part)
    finally:
        stop_all()
        report["seconds"] = round(time.monotonic() - began, 1)
    return report, write_report(report, results_dir)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops its workers and cleans up.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: `python -m bench.run [--quick] [--setups a,b]`."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the harness")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # for the tests
    parser.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="interleaved pairs per measure of compare and dbos (default: 5)",
    )
    parser.add_argument(
        "--setups",
        default=",".join(apps.SETUPS),
        help=f"comma-separated, among {','.join(apps.SETUPS)} (default: all)",
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, among {','.join(PARTS)} (default: all)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    options = parser.parse_args(argv)
    parts = [name.strip() for name in options.only.split(",") if name.strip()]
    if set(parts) - set(PARTS) or not parts:
        parser.error(f"unknown part(s) in --only {options.only!r}; choose among {', '.join(PARTS)}")
    setups = [name.strip() for name in options.setups.split(",") if name.strip()]
    unknown = sorted(set(setups) - set(apps.SETUPS))
    if unknown or not setups:
        parser.error(f"unknown setup(s) {unknown}; choose among {', '.join(apps.SETUPS)}")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if options.tiny:
            chosen: Sizes | Mapping[str, Sizes] = TINY_PAIRED
            part_sizes = PartSizes(
                listing.TINY,
                waiting.TINY,
                nodes.TINY,
                job_length.TINY,
                scale.TINY,
                dbos_peer.TINY,
                fan_out.TINY,
                flow.TINY,
            )
        elif options.quick:
            chosen, part_sizes = (
                QUICK,
                PartSizes(
                    listing.QUICK,
                    waiting.QUICK,
                    nodes.QUICK,
                    job_length.QUICK,
                    scale.QUICK,
                    dbos_peer.QUICK,
                    fan_out.QUICK,
                    flow.QUICK,
                ),
            )
        else:
            chosen, part_sizes = FULL, PartSizes()
        if options.pairs is not None:
            if options.pairs < 1:
                parser.error("--pairs must be at least 1")
            chosen = (
                replace(chosen, pairs=options.pairs)
                if isinstance(chosen, Sizes)
                else {name: replace(one, pairs=options.pairs) for name, one in chosen.items()}
            )
            part_sizes = replace(part_sizes, dbos=replace(part_sizes.dbos, pairs=options.pairs))
        began = time.monotonic()

        def log(message: str) -> None:
            print(f"[{time.monotonic() - began:5.0f} s] {message}", flush=True)

        report, path = run_bench(
            setups, chosen, options.results_dir, log, parts=parts, part_sizes=part_sizes
        )
    except KeyboardInterrupt:
        print("Interrupted; every worker started was stopped.", file=sys.stderr)
        return 130
    print(
        f"\nMachine: {os.cpu_count()} cores; numbers from a shared machine are only as steady "
        "as its load (see load_average in the JSON)."
    )
    if "compare" in parts:
        print()
        print(table(report))
    if "length" in report:
        print("\nJob length, ms per step:")
        print(job_length.table(report["length"]))
    if "nodes" in report and report["nodes"].get("status") != "skipped":
        print("\nWorker nodes (Redis, ergate jobs and bare chains):")
        print(nodes.table(report["nodes"]))
    if "listing" in report:
        print(f"\nlist_jobs, one page (limit {report['listing']['sizes']['limit']}):")
        print(listing.table(report["listing"]))
    if "waiting" in report and report["waiting"].get("status") != "skipped":
        print("\nWaiting jobs (Redis):")
        print(waiting.table(report["waiting"]))
    if "scale" in report:
        print("\nScale curve (stored jobs):")
        print(scale.table(report["scale"]))
    if "dbos" in report:
        print("\nAgainst DBOS Transact (ratios ergate ÷ DBOS), on the same PostgreSQL:")
        print(dbos_peer.table(report["dbos"]))
    if "fan_out" in report:
        print("\nFan-out beside a chord of the same width:")
        print(fan_out.table(report["fan_out"]))
    if "flow" in report:
        print("\nFlow control (Redis):")
        print(flow.table(report["flow"]))
    print(f"\nWritten to {path} ({report['seconds']:.0f} s)")
    return 1 if failures(report) else 0


def failures(report: dict[str, Any]) -> list[str]:
    """What failed in `report`, one line each."""
    found = [
        f"{setup}: {title}"
        for setup, outcome in report["setups"].items()
        for title in outcome.get("errors", {})
    ]
    for backend, outcome in report.get("listing", {}).get("backends", {}).items():
        if outcome["status"] == "failed":
            found.append(f"listing on {backend}")
    for backend, outcome in report.get("scale", {}).get("backends", {}).items():
        if outcome["status"] == "failed":
            found.append(f"scale on {backend}")
    for backend, outcome in report.get("fan_out", {}).get("backends", {}).items():
        if outcome["status"] == "failed":
            found.append(f"fan-out on {backend}")
    found += [f"waiting: {title}" for title in report.get("waiting", {}).get("errors", {})]
    found += [f"nodes: {title}" for title in report.get("nodes", {}).get("errors", {})]
    found += [f"dbos: {title}" for title in report.get("dbos", {}).get("errors", {})]
    for backend, outcome in report.get("length", {}).get("backends", {}).items():
        if outcome["status"] == "failed":
            found.append(f"job length on {backend}")
    if report.get("flow", {}).get("status") == "failed":
        found.append("flow")
    return found


if __name__ == "__main__":
    sys.exit(main())
