"""bench/profile_pg.py's figures: what its traces and profiles say per step, and the
Markdown it prints."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from . import pgtrace

SIDES = ("ergate", "dbos")
#: How cProfile timed the threads (bench/pgtrace.py): one profiler per process on 3.12+.
CLOCK = (
    "each process's threads on its CPU clock"
    if sys.version_info >= (3, 12)
    else "each thread on its own CPU clock"
)
TITLES = {
    "ergate": "ergate_celery (RabbitMQ + PostgreSQL)",
    "dbos": "DBOS Transact",
}


def _kind(sql: str) -> str:
    # A statement as the table shows it: its words, squeezed, its schema names dropped.
    text = re.sub(r"\s+", " ", sql).strip()
    text = re.sub(r'"?ergate_[a-z0-9_]+"?\.', "", text)
    return text[:90] + ("…" if len(text) > 90 else "")


#: The first word of a statement that begins or ends a transaction block.
TRANSACTION = (["BEGIN"], ["COMMIT"], ["ROLLBACK"])


def traced_figures(trips: list[pgtrace.RoundTrip], steps: int) -> dict[str, Any]:
    """Per-step counts and server time of a window's round trips, and statements by kind."""
    statements = [sql for trip in trips for sql in trip.statements]
    transaction = [sql for sql in statements if sql.split(None, 1)[:1] in TRANSACTION]
    kinds = Counter(_kind(sql) for sql in statements)
    return {
        "statements": len(statements) / steps,
        "round_trips": len(trips) / steps,
        "begin_commit_rollback": len(transaction) / steps,
        "prepared": sum(trip.prepared for trip in trips) / steps,
        "bytes_sent": sum(trip.bytes_sent for trip in trips) / steps,
        "bytes_received": sum(trip.bytes_received for trip in trips) / steps,
        "parse_bytes": sum(trip.parse_bytes for trip in trips) / steps,
        "bind_bytes": sum(trip.bind_bytes for trip in trips) / steps,
        "connections_opened": sum(trip.first_of_connection for trip in trips) / steps,
        "server_ms": sum(trip.server_s for trip in trips) * 1000 / steps,
        "by_kind": {sql: count / steps for sql, count in kinds.most_common()},
    }


#: Libraries by the path of their source files, for where a pool process's CPU goes.
LIBRARIES = (
    "ergate_celery",
    "dbos",
    "celery",
    "kombu",
    "billiard",
    "amqp",
    "sqlalchemy",
    "psycopg",
    "pydantic",
    "json",
    "logging",
)


def _library(filename: str) -> str:
    if filename == "~":
        return "built-ins (C)"
    parts = Path(filename).parts
    for name in LIBRARIES:
        if name in parts or f"{name}.py" in parts:
            return name
    return "bench" if "bench" in parts else "other Python"


def python_figures(folder: Path, steps: int) -> dict[str, Any]:
    """CPU of a side's profiled processes (cProfile, each thread on its own CPU clock): per
    step in all, by library, and the functions that take most of it."""
    import pstats

    paths = [str(path) for path in folder.glob("*.prof")]
    if not paths:
        raise RuntimeError(f"no profile was written in {folder}")
    stats: Any = pstats.Stats(*paths)
    total = stats.total_tt
    by_library: Counter[str] = Counter()
    functions: list[tuple[float, int, str]] = []
    for (filename, line, name), (_, calls, tottime, _, _) in stats.stats.items():
        by_library[_library(filename)] += tottime
        where = filename if filename == "~" else "/".join(Path(filename).parts[-2:])
        functions.append((tottime, calls, f"{where}:{line}({name})"))
    functions.sort(reverse=True)
    return {
        "cpu_ms": total * 1000 / steps,
        "by_library_ms": {
            name: seconds * 1000 / steps for name, seconds in by_library.most_common()
        },
        "top_functions": [
            {"function": name, "ms": tottime * 1000 / steps, "calls": calls / steps}
            for tottime, calls, name in functions[:15]
        ],
    }


# Output ------------------------------------------------------------------------------------

ROWS = (
    ("statements", "statements executed", "{:.1f}"),
    ("round_trips", "round trips", "{:.1f}"),
    ("begin_commit_rollback", "of which BEGIN / COMMIT / ROLLBACK", "{:.1f}"),
    ("prepared", "statements prepared (named Parse)", "{:.2f}"),
    ("bytes_sent", "bytes sent", "{:,.0f}"),
    ("parse_bytes", "of which SQL text (Parse)", "{:,.0f}"),
    ("bind_bytes", "of which parameters (Bind)", "{:,.0f}"),
    ("bytes_received", "bytes received", "{:,.0f}"),
    ("connections_opened", "connections opened", "{:.2f}"),
    ("server_ms", "server time, wall (trace), ms", "{:.2f}"),
    ("server_cpu_ms", "server CPU (its backends, /proc), ms", "{:.2f}"),
    ("client_cpu_ms", "client CPU (the side's processes, /proc), ms", "{:.2f}"),
    ("wall_ms", "wall time per step, submit to result, ms", "{:.2f}"),
    ("waiting_statements", "statements of the client waiting (a read every 2 ms)", "{:.1f}"),
)


def markdown(result: dict[str, Any]) -> str:
    """The figures as Markdown: the per-step table, then each side's statements by kind."""
    sides = result["sides"]
    info = result["machine"]
    versions = result["versions"]
    lines = [
        f"Measured {result['date']} on {info['nproc']} cores ({info['cpu']}), Python "
        f"{info['python']}; ergate-celery {versions['ergate-celery']}, DBOS "
        f"{versions['dbos']}, Celery {versions['celery']}, psycopg {versions['psycopg']}, "
        f"SQLAlchemy {versions['SQLAlchemy']}. Load average "
        f"{result['load_average']['start']:.1f} → {result['load_average']['end']:.1f}. "
        f"{result['sizes']['runs']} runs of {result['sizes']['steps_per_run']} no-op steps "
        "per side; figures per step.",
        "",
        f"| per step | {TITLES['ergate']} | {TITLES['dbos']} | ergate ÷ DBOS |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, label, form in ROWS:
        ours, theirs = sides["ergate"][key], sides["dbos"][key]
        ratio = f"{ours / theirs:.2f}\N{MULTIPLICATION SIGN}" if theirs else "-"
        lines.append(f"| {label} | {form.format(ours)} | {form.format(theirs)} | {ratio} |")
    python = result.get("python")
    if python is not None:
        libraries = list(
            dict.fromkeys([*python["ergate"]["by_library_ms"], *python["dbos"]["by_library_ms"]])
        )
        lines += [
            "",
            f"Python time under cProfile ({CLOCK}; profiling inflates "
            f"it): {python['ergate']['cpu_ms']:.2f} ms per step in ergate_celery's pool process, "
            f"{python['dbos']['cpu_ms']:.2f} ms in DBOS's process, by library:",
            "",
            f"| library, ms per step | {TITLES['ergate']} | {TITLES['dbos']} |",
            "| --- | ---: | ---: |",
            *(
                f"| {name} | {python['ergate']['by_library_ms'].get(name, 0.0):.3f} "
                f"| {python['dbos']['by_library_ms'].get(name, 0.0):.3f} |"
                for name in libraries
            ),
        ]
        for side in SIDES:
            lines += [
                "",
                f"{TITLES[side]}: the functions with the most own time:",
                "",
                "| ms per step | calls per step | function |",
                "| ---: | ---: | --- |",
                *(
                    f"| {top['ms']:.3f} | {top['calls']:.1f} | `{top['function']}` |"
                    for top in python[side]["top_functions"]
                ),
            ]
    for side in SIDES:
        lines += [
            "",
            f"{TITLES[side]}, statements per step by kind:",
            "",
            "| per step | statement |",
            "| ---: | --- |",
        ]
        for sql, count in sides[side]["by_kind"].items():
            cell = sql.replace("|", "\\|")
            lines.append(f"| {count:.2f} | `{cell}` |")
    return "\n".join(lines)
