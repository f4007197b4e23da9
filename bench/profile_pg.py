"""Where a step's time goes on PostgreSQL: an ergate_celery step against a DBOS step on the
same database, statement by statement.

    python -m bench.profile_pg [--runs 5] [--warmup 2] [--json PATH]

It prints Markdown, to paste into the docs' benchmark page. Each side runs `runs` workflows of
20 no-op steps, one at a time, submit to result, after `warmup` more; every figure is per step
(the run's totals over its steps).

- ergate_celery: `celery worker -P prefork -c 1` on RabbitMQ + PostgreSQL (bench/apps.py's
  `rabbitmq_postgres` setup, in a schema of the run's own). Its submissions, made in this
  process, are counted with the worker's traffic (the submit is a client's, a step's share of
  it is 1/20); its waiting (`wait_for_job`, a read every 2 ms) is not.
- DBOS: the application process of bench/dbos_app.py (workflows run in the process that starts
  them; its start is counted), its system tables in a schema of the run's own. Its client's
  waiting, in this process, is not counted; its background threads' reads during the window
  are (its queue poller reads once a second).

Three passes, each with new processes:

1. traced: libpq's protocol trace of every connection (bench/pgtrace.py): statements executed,
   round trips (a Sync or simple Query answered by ReadyForQuery), BEGIN / COMMIT / ROLLBACK
   among them, statements prepared under a name, bytes each way, and the server's time: from
   the client's last message of a round trip to ReadyForQuery (wall time, so on a loaded
   machine it includes waiting for a core), and the statements by kind;
2. timed, not traced (tracing costs CPU): CPU seconds of the side's processes (the worker and
   its pool process; DBOS's application) and of the PostgreSQL server processes of their
   connections, from /proc, and the wall time of a step;
3. profiled: ergate's pool process and DBOS's process under cProfile, each thread timed by
   its own CPU clock (bench/pgtrace.py): Python time per step by library, and the functions
   with the most own time. Warm-up runs included, and DBOS's background threads (a queue
   poller that reads once a second); DBOS's launch excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import apps, pgtrace
from .apps import Bench, BenchConfig
from .dbos_app import DbosApp
from .profile_figures import SIDES, markdown, python_figures, traced_figures
from .report import machine
from .storage import postgres
from .workers import descendants, worker

#: Clock ticks per second of /proc/<pid>/stat's CPU times.
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProfileSizes:
    """Measured runs of 20 steps per side and pass, warm-up runs before them."""

    runs: int = 5
    warmup: int = 2
    timeout: float = 300.0


# Running the sides -------------------------------------------------------------------------


@dataclass
class Sides:
    """One pass's processes: ergate's worker (and the apps submitting and waiting), DBOS's."""

    submit: Bench
    wait: Bench
    worker_pid: int
    dbos: DbosApp
    client: Any
    folders: dict[str, Path]
    trace: bool


#: Where this process records the connections it opens now (None: nowhere).
_recording: tuple[Path, bool] | None = None
_installed = False


@contextlib.contextmanager
def recording(folder: Path, trace: bool) -> Iterator[None]:
    """Record (and trace, if `trace`) in `folder` the connections this process opens in the
    block: those of the submitting app, of the waiting app's store, of DBOS's client."""
    global _recording
    _recording = (folder, trace)
    try:
        yield
    finally:
        _recording = None


def ergate_run(sides: Sides, index: int, timeout: float) -> None:
    """One 20-step job: submitted through the traced app, awaited through the other."""
    submitter, waiter = sides.submit.ergate, sides.wait.ergate
    assert submitter is not None
    assert waiter is not None
    with recording(sides.folders["submit"], sides.trace):
        job = submitter.submit_job(apps.LONG_WORKFLOW, initial_input_value=index)
    with recording(sides.folders["ergate_wait"], sides.trace):
        done = waiter.wait_for_job(job.id, timeout=timeout)
    if done.status.name != "COMPLETED" or done.last_return_value != index:
        raise RuntimeError(f"wrong outcome: job {done!r}")


def dbos_run(sides: Sides, index: int, timeout: float) -> None:
    """One 20-step DBOS workflow, started in its process, awaited by polling its status."""
    (workflow_id,) = sides.dbos.start("chain20", 1, index)
    with recording(sides.folders["dbos_wait"], sides.trace):
        value = sides.client.retrieve_workflow(workflow_id).get_result(
            polling_interval_sec=apps.WAIT_POLL_INTERVAL
        )
    if value != index:
        raise RuntimeError(f"wrong outcome: DBOS workflow gave {value!r}")


@contextlib.contextmanager
def sides_of(
    folder: Path,
    config: BenchConfig,
    dbos_schema: str,
    trace: bool,
    timeout: float,
    cprofile: Path | None = None,
) -> Iterator[Sides]:
    """The processes of one pass, recording (and tracing, if `trace`) their connections; with
    `cprofile`, the worker's pool process and DBOS's process run under cProfile and write
    their statistics to its `ergate` and `dbos` subfolders."""
    global _installed
    if not _installed:
        pgtrace.install(lambda: _recording)
        _installed = True
    folders = {side: folder / side for side in (*SIDES, "submit", "ergate_wait", "dbos_wait")}
    for path in folders.values():
        path.mkdir(parents=True)
    profile = {"ERGATE_BENCH_PG_TRACE": "1" if trace else ""}
    with contextlib.ExitStack() as stack:
        dbos_env = {**profile, "ERGATE_BENCH_PG_PROFILE": str(folders["dbos"])}
        if cprofile is not None:
            dbos_env["ERGATE_BENCH_CPROFILE"] = str(cprofile / "dbos")
        with _environ(dbos_env):
            dbos = DbosApp(dbos_schema, folder / "dbos-app.log")
        stack.callback(dbos.stop)
        submit, wait = apps.build(config), apps.build(config)
        stack.callback(submit.app.close)
        stack.callback(wait.app.close)
        worker_env = {**profile, "ERGATE_BENCH_PG_PROFILE": str(folders["ergate"])}
        if cprofile is not None:
            worker_env["ERGATE_BENCH_CPROFILE"] = str(cprofile / "ergate")
        with _environ(worker_env):
            pid = stack.enter_context(worker(config, wait, folder, timeout, options=("-c", "1")))
        dbos.wait_ready()
        from dbos import DBOSClient

        with recording(folders["dbos_wait"], trace):
            client = DBOSClient(
                system_database_url=apps.POSTGRES_URL, dbos_system_schema=dbos_schema
            )
        stack.callback(client.destroy)
        # This process's traces (submit, waiting) are complete once libpq's buffers are out.
        stack.callback(pgtrace.flush)
        yield Sides(submit, wait, pid, dbos, client, folders, trace)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# Measuring ---------------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each process still alive, from /proc/<pid>/stat."""
    found: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    return found


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


def _windows(
    sides: Sides, sizes: ProfileSizes, timed: bool, which: tuple[str, ...] = SIDES
) -> dict[str, dict[str, Any]]:
    """Each side's measured runs: the window's start and end (epoch seconds), and, if `timed`,
    CPU seconds of its processes and of their server processes, and wall time per step."""
    runs: dict[str, Callable[[int], None]] = {
        "ergate": lambda index: ergate_run(sides, index, sizes.timeout),
        "dbos": lambda index: dbos_run(sides, index, sizes.timeout),
    }
    processes = {
        "ergate": lambda: descendants(sides.worker_pid),
        "dbos": lambda: [sides.dbos.process.pid],
    }
    servers = {
        "ergate": lambda: (
            pgtrace.backends(sides.folders["ergate"]) + pgtrace.backends(sides.folders["submit"])
        ),
        "dbos": lambda: pgtrace.backends(sides.folders["dbos"]),
    }
    for index in range(sizes.warmup):
        for side in which:
            runs[side](index)
    found: dict[str, dict[str, Any]] = {}
    for side in which:
        client_before = cpu_seconds(processes[side]())
        server_before = cpu_seconds(servers[side]())
        start = time.time()
        walls: list[float] = []
        for index in range(sizes.runs):
            began = time.perf_counter()
            runs[side](index)
            walls.append(time.perf_counter() - began)
        end = time.time()
        found[side] = {"start": start, "end": end}
        if timed:
            found[side].update(
                client_cpu_s=_spent(client_before, cpu_seconds(processes[side]())),
                server_cpu_s=_spent(server_before, cpu_seconds(servers[side]())),
                wall_ms_per_step=statistics.median(walls) * 1000 / apps.LONG_STEPS,
            )
    return found


def _in(trips: list[pgtrace.RoundTrip], window: dict[str, Any]) -> list[pgtrace.RoundTrip]:
    return [trip for trip in trips if window["start"] <= trip.sent_at <= window["end"]]


def profile(
    sizes: ProfileSizes, log: Callable[[str], None], keep: Path | None = None
) -> dict[str, Any]:
    """Both passes on both sides; the figures per step. With `keep`, the traces and the
    processes' logs are copied there."""
    from importlib.metadata import version

    run = uuid.uuid4().hex[:8]
    ergate_schema = f"{apps.POSTGRES_SCHEMA}_profile_{run}"
    dbos_schema = f"{apps.POSTGRES_SCHEMA}_dbos_{run}"
    folder = Path(tempfile.mkdtemp(prefix="ergate-profile-pg-"))
    config = BenchConfig(
        setup="rabbitmq_postgres",
        folder=folder,
        queue=f"ergate-profile-{run}",
        postgres_schema=ergate_schema,
    )
    steps = sizes.runs * apps.LONG_STEPS
    drop = [f"DROP SCHEMA IF EXISTS {name} CASCADE" for name in (ergate_schema, dbos_schema)]
    postgres(*drop, f"CREATE SCHEMA {ergate_schema}")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average": {"start": _load()},
        "versions": {
            name: version(name)
            for name in ("ergate-celery", "dbos", "celery", "psycopg", "SQLAlchemy")
        },
        "sizes": {"runs": sizes.runs, "warmup": sizes.warmup, "steps_per_run": apps.LONG_STEPS},
    }
    try:
        log("profile: traced pass…")
        with sides_of(folder / "traced", config, dbos_schema, True, sizes.timeout) as sides:
            traced_windows = _windows(sides, sizes, timed=False)
        traced = {}
        for side in SIDES:
            window = traced_windows[side]
            trips = pgtrace.read_traces(folder / "traced" / side)
            if side == "ergate":
                trips += pgtrace.read_traces(folder / "traced" / "submit")
            traced[side] = traced_figures(_in(trips, window), steps)
            waiting = _in(pgtrace.read_traces(folder / "traced" / f"{side}_wait"), window)
            traced[side]["waiting_statements"] = sum(len(t.statements) for t in waiting) / steps
        log("profile: timed pass…")
        with sides_of(folder / "timed", config, dbos_schema, False, sizes.timeout) as sides:
            timed = _windows(sides, sizes, timed=True)
        log("profile: cProfile pass…")
        profiles = folder / "cprofile"
        with sides_of(
            folder / "profiled", config, dbos_schema, False, sizes.timeout, cprofile=profiles
        ) as sides:
            _windows(sides, sizes, timed=False)
        # Every step the processes ran: the warm-up's and the measured runs'.
        result["python"] = {
            side: python_figures(profiles / side, (sizes.warmup + sizes.runs) * apps.LONG_STEPS)
            for side in SIDES
        }
        result["sides"] = {
            side: {
                **traced[side],
                "client_cpu_ms": timed[side]["client_cpu_s"] * 1000 / steps,
                "server_cpu_ms": timed[side]["server_cpu_s"] * 1000 / steps,
                "wall_ms": timed[side]["wall_ms_per_step"],
            }
            for side in SIDES
        }
    finally:
        with contextlib.suppress(Exception):
            _delete_queue(config)
        postgres(*drop)
        if keep is not None:
            shutil.copytree(folder, keep, dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        result["load_average"]["end"] = _load()
    return result


def _load() -> float:
    return os.getloadavg()[0]


def _delete_queue(config: BenchConfig) -> None:
    bench = apps.build(config)
    try:
        with bench.app.connection_for_write() as conn:
            channel: Any = conn.default_channel
            channel.queue_delete(config.queue)
    finally:
        bench.app.close()


def main(argv: list[str] | None = None) -> int:
    """The command line: `python -m bench.profile_pg [--runs N] [--warmup N] [--json PATH]`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile_pg", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=ProfileSizes.runs)
    parser.add_argument("--warmup", type=int, default=ProfileSizes.warmup)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--keep", type=Path, default=None, help="copy the traces and logs to this folder"
    )
    options = parser.parse_args(argv)
    from .dbos_peer import unavailable_here
    from .run import unavailable

    reason = unavailable_here(lambda setup: unavailable(setup) if setup != "redis" else None)
    if reason is not None:
        print(f"Cannot profile: {reason}", file=sys.stderr)
        return 1
    sizes = replace(ProfileSizes(), runs=options.runs, warmup=options.warmup)
    result = profile(
        sizes, lambda message: print(message, file=sys.stderr, flush=True), keep=options.keep
    )
    if options.json is not None:
        options.json.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
