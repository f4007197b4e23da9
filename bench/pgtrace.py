"""What a process says to PostgreSQL: libpq's protocol trace of its connections, and the
server processes that answer them; and where a Celery pool process spends its CPU (for
bench/profile_pg.py).

`install(target)` makes every SQLAlchemy pool of the process (ergate_celery's store, Celery's
database backend, DBOS's system database: all go through SQLAlchemy and psycopg 3) write,
for each new connection, its server process id to `<folder>/backends-<pid>.txt` and, when
`trace` is on, libpq's trace of every protocol message (timestamped to the microsecond) to
`<folder>/trace-<pid>-<n>.log`. A process whose `ERGATE_BENCH_PG_PROFILE` names a folder
installs it when bench/apps.py or bench/dbos_app.py is imported, with the trace on when
`ERGATE_BENCH_PG_TRACE=1`.

With `ERGATE_BENCH_CPROFILE` naming a folder, each Celery pool process of a worker (and
bench/dbos_app.py's process, its launch forgotten) runs under cProfile, each thread timed by
its own CPU clock so that waiting counts for nothing (on Python 3.12+, where a process has one
profiler at a time, every thread by the process's CPU clock), and writes `<folder>/<pid>.prof`
when it exits.

libpq buffers the trace in C: `flush` writes it out; `install_in_worker` calls it when a
Celery pool process or the process exits (normally: a killed process loses its last lines).

`read_traces` parses the files back into round trips: what the client sent up to its Sync (or
simple Query) and the time until the server's ReadyForQuery.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

#: The traced connections of this process and their files, for `flush`.
_open: list[tuple[Any, IO[bytes]]] = []
_numbers = itertools.count()


def install(target: Callable[[], tuple[Path, bool] | None]) -> None:
    """Record every new pooled connection of this process (see the module docstring) in the
    folder `target()` names, traced if it says so; not at all while it returns None, so a
    harness can record some of its connections and not others."""
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    def connected(dbapi_connection: Any, record: Any) -> None:
        pgconn = getattr(dbapi_connection, "pgconn", None)
        where = target()
        if pgconn is None or where is None:
            return
        folder, trace = where
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"backends-{os.getpid()}.txt").open("a") as file:
            file.write(f"{pgconn.backend_pid}\n")
        if trace:
            output = (folder / f"trace-{os.getpid()}-{next(_numbers)}.log").open("ab")
            _open.append((pgconn, output))
            pgconn.trace(output.fileno())

    event.listen(Pool, "connect", connected)


def flush() -> None:
    """Stop tracing and write out what libpq still buffers; for a process about to exit."""
    while _open:
        pgconn, output = _open.pop()
        with contextlib.suppress(Exception):
            pgconn.untrace()
        output.close()


def install_in_worker() -> None:
    """`install_from_env`, with the traces flushed when a Celery pool process or this process
    exits (a pool process ends with `os._exit`, which skips C's buffers); and cProfile in each
    pool process if `ERGATE_BENCH_CPROFILE` asks for it."""
    if os.environ.get("ERGATE_BENCH_PG_PROFILE", ""):
        from celery.signals import worker_process_shutdown

        install_from_env()
        atexit.register(flush)
        worker_process_shutdown.connect(lambda **kwargs: flush(), weak=False)
    profiles = os.environ.get("ERGATE_BENCH_CPROFILE", "")
    if profiles:
        _profile_pool_processes(Path(profiles))


def _profile_pool_processes(folder: Path) -> None:
    from celery.signals import worker_process_init, worker_process_shutdown

    started: list[ThreadProfiles] = []

    def init(**kwargs: Any) -> None:
        started.append(ThreadProfiles(folder))

    def ending(**kwargs: Any) -> None:
        for profiles in started:
            profiles.write()

    worker_process_init.connect(init, weak=False)
    worker_process_shutdown.connect(ending, weak=False)


class ThreadProfiles:
    """This thread, and every thread started after it, under cProfile, each timed by its own
    CPU clock: waiting counts for nothing, and threads do not count each other's time."""

    def __init__(self, folder: Path) -> None:
        import cProfile
        import threading
        import time

        self.folder = folder
        self._lock = threading.Lock()
        if sys.version_info >= (3, 12):
            # One profiler at a time per process (cProfile on sys.monitoring), and it sees
            # every thread: the process's CPU clock, shared by its threads, times them all.
            self._profilers = [cProfile.Profile(time.process_time)]
            self._profilers[0].enable()
            return
        self._profilers = [cProfile.Profile(time.thread_time)]

        def begin(frame: Any, event: str, arg: Any) -> None:
            # The first event of a new thread: from here on its own profiler takes over.
            profiler = cProfile.Profile(time.thread_time)
            with self._lock:
                self._profilers.append(profiler)
            profiler.enable()

        threading.setprofile(begin)
        self._profilers[0].enable()

    def clear(self) -> None:
        """Forget what was measured so far (a start-up), in every thread."""
        with self._lock:
            for profiler in self._profilers:
                profiler.clear()

    def write(self) -> None:
        """Stop, and write every thread's statistics to `<folder>/<pid>.prof`."""
        import pstats
        import threading

        threading.setprofile(None)  # type: ignore[arg-type]
        with self._lock:
            taken = list(self._profilers)
        stats = pstats.Stats(*taken)  # each profiler is stopped as its statistics are taken
        self.folder.mkdir(parents=True, exist_ok=True)
        stats.dump_stats(str(self.folder / f"{os.getpid()}.prof"))


def install_from_env() -> None:
    """`install` as `ERGATE_BENCH_PG_PROFILE` and `ERGATE_BENCH_PG_TRACE` ask, if they do."""
    folder = os.environ.get("ERGATE_BENCH_PG_PROFILE", "")
    if folder:
        where = (Path(folder), os.environ.get("ERGATE_BENCH_PG_TRACE", "") == "1")
        install(lambda: where)


@dataclass
class RoundTrip:
    """One exchange: what the client sent, until the server was ready for the next."""

    sent_at: float
    #: Seconds from the client's last message (Sync or Query) to the server's ReadyForQuery.
    server_s: float
    #: The SQL of each statement executed (Execute of a parsed or prepared one, or a Query).
    statements: list[str]
    #: Statements prepared under a name (psycopg prepares one after its 5th execution).
    prepared: int
    bytes_sent: int
    bytes_received: int
    #: Of the bytes sent, those of Parse messages: the SQL text of statements not prepared.
    parse_bytes: int
    #: Of the bytes sent, those of Bind messages: the statements' parameters.
    bind_bytes: int
    #: The first round trip of its connection (the trace starts once it is connected).
    first_of_connection: bool


@dataclass
class _Connection:
    names: dict[str, str] = field(default_factory=dict)
    parsed: str = ""
    pending: list[str] = field(default_factory=list)
    prepared: int = 0
    first: float | None = None
    last: float = 0.0
    sent: int = 0
    received: int = 0
    parse_bytes: int = 0
    bind_bytes: int = 0


def _when(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()


#: The start of a trace record; SQL is printed as it is, newlines included, so a record can
#: run over several lines.
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\t[FB]\t")
#: Parse: its statement name (psycopg's have no quotes) and its SQL, which may hold quotes.
_PARSE = re.compile(r'^ "([^"]*)" "(.*)" \d+( \d+)*\s*$', re.DOTALL)
#: Bind: its portal and statement names.
_BIND = re.compile(r'^ "([^"]*)" "([^"]*)"')


def records(lines: Iterable[str]) -> Iterator[str]:
    """The trace's records, each whole (continuation lines joined back)."""
    current: str | None = None
    for line in lines:
        if _RECORD.match(line):
            if current is not None:
                yield current
            current = line.rstrip("\n")
        elif current is not None:
            current += "\n" + line.rstrip("\n")
    if current is not None:
        yield current


def parse(lines: Iterable[str]) -> list[RoundTrip]:
    """The round trips of one connection's trace."""
    conn = _Connection()
    trips: list[RoundTrip] = []
    for record in records(lines):
        fields = record.split("\t", 4)
        if len(fields) < 4:
            continue
        stamp, direction, length, kind = fields[:4]
        rest = fields[4] if len(fields) > 4 else ""
        at = _when(stamp)
        if direction == "F":
            conn.first = at if conn.first is None else conn.first
            conn.last = at
            conn.sent += int(length) + 1
            parsed, bound = _PARSE.match(rest), _BIND.match(rest)
            if kind == "Parse":
                conn.parse_bytes += int(length) + 1
            elif kind == "Bind":
                conn.bind_bytes += int(length) + 1
            if kind == "Parse" and parsed:
                name, sql = parsed.group(1), parsed.group(2)
                conn.parsed = sql
                if name:
                    conn.names[name] = sql
                    conn.prepared += 1
            elif kind == "Bind" and bound and bound.group(2):
                conn.parsed = conn.names.get(bound.group(2), conn.parsed)
            elif kind == "Execute":
                conn.pending.append(conn.parsed)
            elif kind == "Query":
                conn.pending.append(rest.strip()[1:-1])
        elif direction == "B":
            conn.received += int(length) + 1
            if kind == "ReadyForQuery" and conn.first is not None:
                trips.append(
                    RoundTrip(
                        conn.first,
                        at - conn.last,
                        conn.pending,
                        conn.prepared,
                        conn.sent,
                        conn.received,
                        conn.parse_bytes,
                        conn.bind_bytes,
                        not trips,
                    )
                )
                conn = _Connection(names=conn.names)
    return trips


def read_traces(folder: Path, pid: int | None = None) -> list[RoundTrip]:
    """Every round trip in the traces of `folder` (of process `pid` only, if given)."""
    pattern = f"trace-{pid}-*.log" if pid is not None else "trace-*.log"
    trips: list[RoundTrip] = []
    for path in sorted(folder.glob(pattern)):
        with path.open(errors="replace") as file:
            trips += parse(file)
    return trips


def backends(folder: Path) -> list[int]:
    """The server process ids of every connection recorded in `folder`."""
    found: list[int] = []
    for path in folder.glob("backends-*.txt"):
        found += [int(line) for line in path.read_text().split()]
    return found
