"""The harness's report: what it ran on, each part's outcome, the tables it prints, the JSON
it writes."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def aligned(rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """`rows` (the first is the header) as text columns: the first `left` ones flush left,
    the others flush right, and a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


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
    for package in (
        "celery",
        "kombu",
        "ergate-celery",
        "redis",
        "SQLAlchemy",
        "pydantic",
        "dbos",
    ):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def error_text(exc: BaseException) -> str:
    """An error as the report records it: its type and message."""
    return f"{type(exc).__name__}: {exc}"


def attempt(
    label: str,
    setup: str,
    unavailable: Callable[[str], str | None],
    run: Callable[[], dict[str, Any]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """`run()` as a report entry: `ran` with what it returns, `skipped` with the reason when
    `setup`'s services do not answer, or `failed` with its error."""
    reason = unavailable(setup)
    if reason is not None:
        log(f"{label}: skipped ({reason})")
        return {"status": "skipped", "reason": reason}
    try:
        return {"status": "ran", **run()}
    except Exception as exc:
        log(f"{label}: failed: {error_text(exc)}")
        return {"status": "failed", "error": error_text(exc)}


def not_ran(label: str, outcome: dict[str, Any]) -> str | None:
    """The note for an entry that did not run (its status and why), or None if it ran."""
    if outcome.get("status") == "ran":
        return None
    return f"{label}: {outcome.get('status')} ({outcome.get('reason') or outcome.get('error')})"


def _number(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def _ratio(value: Any) -> str:
    return f"{value:.2f}x" if isinstance(value, int | float) else "-"


def setup_table(setup: str, outcome: dict[str, Any]) -> str:
    """One setup's measures: the median of each side, the median ratio (ergate / bare) of
    the pairs, its range and interquartile range, and the number of pairs."""
    rows: list[tuple[str, ...]] = [
        ("measure", "bare", "ergate", "ratio", "min-max", "IQR", "pairs")
    ]
    for name, measure in outcome["measures"].items():
        low, high = measure.get("ratio_min"), measure.get("ratio_max")
        iqr = measure.get("ratio_iqr")
        rows.append(
            (
                f"{name} ({measure['better']} is better)",
                _number(measure["bare"]),
                _number(measure["ergate"]),
                _ratio(measure["ratio"]),
                f"{low:.2f}-{high:.2f}" if low is not None else "-",
                f"{iqr[0]:.2f}-{iqr[1]:.2f}" if iqr else "-",
                str(measure.get("pairs", 1)),
            )
        )
    title = f"{setup}: {outcome.get('broker_and_backend', '')}, {outcome.get('worker', '')}"
    notes = [f"  {title} failed: {error}" for title, error in outcome["errors"].items()]
    return "\n".join([title, *aligned(rows), *notes])


def table(report: dict[str, Any]) -> str:
    """One table per setup (see `setup_table`); a line for each setup skipped."""
    blocks: list[str] = []
    for setup, outcome in report["setups"].items():
        if outcome["status"] == "skipped":
            blocks.append(f"{setup}: skipped ({outcome['reason']})")
        else:
            blocks.append(setup_table(setup, outcome))
    return "\n\n".join(blocks)


def write_report(report: dict[str, Any], directory: Path) -> Path:
    """Write `report` to `<directory>/<UTC date-time>.json` (atomically) and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    path = directory / f"{stamp}.json"
    temporary = directory / f"{stamp}.json.tmp"
    temporary.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)
    return path
