"""Benchmark ergate_celery against bare Celery on the same app, broker, backend and workers.

    python -m bench.run [--quick] [--setups redis,rabbitmq_postgres,embedded]
                        [--only compare,listing,waiting,scale]

Four parts, all by default. `compare`: for each setup whose services answer on loopback,
the harness starts its own worker subprocesses (prefork, 2 processes) and measures, bare
Celery vs ergate_celery:

- hop latency: one 20-step job, submit to final, vs a `chain` of 20 no-op tasks (median);
- throughput: N jobs of 5 no-op steps vs N chains of 5, submitted then awaited (steps/s);
- submit latency: `submit_job()` vs `noop.delay()` (p50, p99), with no worker consuming;
- bytes per hop: the JSON body of a message published by a worker between two steps, for a
  small and a 10 kB return value (captured by a `before_task_publish` receiver);
- worker memory: RSS of a worker and its pool processes with 50 extra workflows registered
  vs a worker holding only the no-op task.

`listing` (bench/listing.py): one `list_jobs` page with 1,000 and 100,000 stored jobs, on
Redis and PostgreSQL. `waiting` (bench/waiting.py): sleeping jobs released per second by a
release run, and wake-up lateness with 10,000 sleeping jobs and a real beat. `scale`
(bench/scale.py): step, release, sweep and `list_jobs` costs against the stored-job count,
with a chart in `bench/results/scale.png`.

It prints one table per part and writes the numbers to `bench/results/<UTC date-time>.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from . import apps, listing, scale, waiting
from .apps import Bench, BenchConfig
from .measures import (
    FULL,
    QUICK,
    Sizes,
    measure_bytes,
    measure_hop_latency,
    measure_memory,
    measure_submit,
    measure_throughput,
)
from .workers import stop_all, worker

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARTS = ("compare", "listing", "waiting", "scale")

SERVICES = {
    "redis": [("Redis", "127.0.0.1", 6379)],
    "rabbitmq_postgres": [("RabbitMQ", "127.0.0.1", 5672), ("PostgreSQL", "127.0.0.1", 5432)],
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
            from ergate_celery.embedded_broker import embedded_broker_settings  # noqa: F401
        except ImportError as exc:
            return f"ergate_celery.embedded_broker is not importable ({exc})"
    return None


def _redis_flush() -> None:
    import redis

    client = redis.Redis.from_url(apps.REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


def _postgres(statements: Sequence[str]) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(apps.POSTGRES_URL)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SET lock_timeout = '10s'"))
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


@contextlib.contextmanager
def prepared(setup: str, folder: Path) -> Iterator[None]:
    """Empty the setup's own storage before and after: Redis db 12, the `ergate_bench`
    schema, the embedded folder. Nothing else is touched."""
    schema = apps.POSTGRES_SCHEMA

    def clean() -> None:
        if setup == "redis":
            _redis_flush()
        elif setup == "rabbitmq_postgres":
            _postgres([f"DROP SCHEMA IF EXISTS {schema} CASCADE"])

    clean()
    if setup == "rabbitmq_postgres":
        _postgres([f"CREATE SCHEMA {schema}"])
    try:
        yield
    finally:
        clean()


def _delete_queue(bench: Bench) -> None:
    # RabbitMQ keeps a durable queue after its consumers leave; Redis is flushed anyway.
    if bench.config.setup != "rabbitmq_postgres":
        return
    with bench.app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        channel.queue_delete(bench.config.queue)


# One setup ---------------------------------------------------------------------------------


def _server_version(bench: Bench) -> dict[str, str]:
    versions: dict[str, str] = {}
    with contextlib.suppress(Exception):
        if bench.config.setup == "redis":
            import redis

            client = redis.Redis.from_url(apps.REDIS_URL)
            versions["redis_server"] = str(client.info("server")["redis_version"])
            client.close()
        elif bench.config.setup == "rabbitmq_postgres":
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


def run_setup(setup: str, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    """All measures on one setup; a measure that fails is recorded with its error."""
    reason = unavailable(setup)
    if reason is not None:
        log(f"{setup}: skipped ({reason})")
        return {"status": "skipped", "reason": reason}
    run_dir = Path(tempfile.mkdtemp(prefix=f"ergate-bench-{setup}-"))
    queue = f"ergate-bench-{uuid.uuid4().hex[:12]}"
    config = BenchConfig(setup=setup, folder=run_dir, queue=queue)
    outcome: dict[str, Any] = {
        "status": "ran",
        "queue": queue,
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
            steps: list[tuple[str, Callable[[], dict[str, dict[str, Any]]], BenchConfig | None]]
            steps = [
                ("submit", lambda: measure_submit(current, sizes), None),
                ("hop latency", lambda: measure_hop_latency(current, sizes), config),
                ("throughput", lambda: measure_throughput(current, sizes), config),
                (
                    "bytes per hop",
                    lambda: measure_bytes(current, capture, sizes),
                    replace(config, capture=capture),
                ),
                ("worker memory", lambda: measure_memory(current, run_dir, sizes), None),
            ]
            for title, measure, worker_config in steps:
                log(f"{setup}: {title}…")
                try:
                    with contextlib.ExitStack() as stack:
                        if worker_config is not None:
                            stack.enter_context(
                                worker(worker_config, current, run_dir, sizes.timeout)
                            )
                        outcome["measures"].update(measure())
                except Exception as exc:
                    outcome["errors"][title] = f"{type(exc).__name__}: {exc}"
                    log(f"{setup}: {title} failed: {type(exc).__name__}: {exc}")
            _delete_queue(current)
    except Exception as exc:
        outcome["errors"]["setup"] = f"{type(exc).__name__}: {exc}"
        log(f"{setup}: failed: {type(exc).__name__}: {exc}")
    finally:
        stop_all()
        outcome["load_average"]["end"] = os.getloadavg()[0]
        if bench is not None:
            bench.app.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return outcome


# Report ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    memory_kib = 0
    cpu = platform.processor()
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "memory_mib": memory_kib // 1024,
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def versions() -> dict[str, str]:
    """Versions of the libraries on both sides."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for package in ("celery", "kombu", "ergate-celery", "redis", "SQLAlchemy", "pydantic"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def _number(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def table(report: dict[str, Any]) -> str:
    """One row per setup and measure: bare, ergate, ratio (ergate / bare)."""
    rows = [("setup", "measure", "bare", "ergate", "ratio")]
    notes: list[str] = []
    for setup, outcome in report["setups"].items():
        if outcome["status"] == "skipped":
            notes.append(f"{setup}: skipped ({outcome['reason']})")
            continue
        for name, measure in outcome["measures"].items():
            ratio = measure["ratio"]
            rows.append(
                (
                    setup,
                    f"{name} ({measure['better']} is better)",
                    _number(measure["bare"]),
                    _number(measure["ergate"]),
                    f"{ratio:.2f}x" if ratio is not None else "-",
                )
            )
        notes += [f"{setup}: {title} failed: {error}" for title, error in outcome["errors"].items()]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines + notes)


def write_report(report: dict[str, Any], directory: Path) -> Path:
    """Write `report` to `<directory>/<UTC date-time>.json` (atomically) and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    path = directory / f"{stamp}.json"
    temporary = directory / f"{stamp}.json.tmp"
    temporary.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)
    return path


@dataclass(frozen=True)
class PartSizes:
    """The sizes of the listing and waiting parts."""

    listing: listing.ListingSizes = listing.FULL
    waiting: waiting.WaitingSizes = waiting.FULL
    scale: scale.ScaleSizes = scale.FULL


def _loaded(part: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    # Other processes on the machine skew every number: the 1-minute load, before/after.
    start = os.getloadavg()[0]
    outcome = part()
    return {**outcome, "load_average": {"start": start, "end": os.getloadavg()[0]}}


def run_bench(
    setups: Sequence[str],
    sizes: Sizes,
    results_dir: Path = RESULTS_DIR,
    log: Callable[[str], None] = print,
    parts: Sequence[str] = ("compare",),
    part_sizes: PartSizes | None = None,
) -> tuple[dict[str, Any], Path]:
    """Run the `parts` asked for (`compare`: every measure on every setup), then write the
    JSON report; returns it and its path."""
    part_sizes = part_sizes or PartSizes()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "sizes": asdict(sizes),
        "notes": {
            "ratio": "ergate / bare",
            "worker": "celery worker -P prefork -c 2 --without-gossip --without-mingle "
            "--without-heartbeat, one per measure, on a queue of the run's own",
            "acks_late": {"bare": False, "ergate": True},
            "wait": "on Redis, wait_for_job and AsyncResult.get are woken by a publish; "
            f"elsewhere they read every {apps.WAIT_POLL_INTERVAL} s",
        },
        "setups": {},
    }
    try:
        if "compare" in parts:
            for setup in setups:
                report["setups"][setup] = run_setup(setup, sizes, log)
        if "listing" in parts:
            report["listing"] = _loaded(
                lambda: listing.run_listing(part_sizes.listing, unavailable, log)
            )
        if "waiting" in parts:
            reason = unavailable("redis")
            if reason is None:
                report["waiting"] = _loaded(lambda: waiting.run_waiting(part_sizes.waiting, log))
            else:
                log(f"waiting: skipped ({reason})")
                report["waiting"] = {"status": "skipped", "reason": reason}
        if "scale" in parts:
            report["scale"] = _loaded(
                lambda: scale.run_scale(part_sizes.scale, unavailable, log, results_dir)
            )
    finally:
        stop_all()
    return report, write_report(report, results_dir)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops its workers and cleans up.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: `python -m bench.run [--quick] [--setups a,b]`."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the harness")
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
        report, path = run_bench(
            setups,
            QUICK if options.quick else FULL,
            options.results_dir,
            parts=parts,
            part_sizes=PartSizes(listing.QUICK, waiting.QUICK, scale.QUICK)
            if options.quick
            else PartSizes(),
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
    if "listing" in report:
        print(f"\nlist_jobs, one page (limit {report['listing']['sizes']['limit']}):")
        print(listing.table(report["listing"]))
    if "waiting" in report and report["waiting"].get("status") != "skipped":
        print("\nWaiting jobs (Redis):")
        print(waiting.table(report["waiting"]))
    if "scale" in report:
        print("\nScale curve (stored jobs):")
        print(scale.table(report["scale"]))
    print(f"\nWritten to {path}")
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
    found += [f"waiting: {title}" for title in report.get("waiting", {}).get("errors", {})]
    return found


if __name__ == "__main__":
    sys.exit(main())
