"""`celery -A proj ergate ...`: list, show and watch jobs (submit, cancel and signal are in
`changing.py`, retry, pause and resume in `operations.py`, `workflows` and `graph` in
`workflows.py`).

Installed as a Celery CLI extension (entry point group `celery.commands`), so every command
works on the app given by `celery -A proj`. Exit codes: 0 success; 1 the job is not (or will
not be) what was asked (`cancel` of a finished job, `retry` of a job that did not stop,
`watch` of a job that did not complete); 2 bad input (unknown workflow or job id, invalid
JSON, a duration or tag that does not parse, input the workflow rejects, a workflows module
that cannot be imported). Celery's `--no-color` and `--quiet` apply (`celery --quiet ergate
...` leaves out the remarks printed to stderr).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from ergate_celery.binding import ErgateCelery
from ergate_celery.cli.arguments import (
    COMMAND,
    binding,
    ergate,
    found_job,
    input_errors,
    note,
    option,
    out,
    since_arg,
    status_text,
    tags_arg,
)
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.operations.flow import describe_wait, waiting_for
from ergate_celery.scheduling.overdue import overdue_by, overdue_note
from ergate_celery.stores.listing import MAX_LIMIT

_STATUS_NAMES = [status.name for status in JobStatus]


def _step_label(ergate: ErgateCelery, job: Job) -> str:
    """`#index name` of the job's current step (the name when its workflow is known here)."""
    try:
        workflow = ergate.workflows[job.workflow_name]
    except KeyError:
        return f"#{job.current_step}"
    if job.current_step >= len(workflow):
        return f"#{job.current_step} (end)"
    return f"#{job.current_step} {workflow[job.current_step].name}"


def _summary(ergate: ErgateCelery, job: Job) -> dict[str, Any]:
    """The one-line view of a job that `list` and `watch` print (`overdue`: a scheduled job
    beat has not released, in seconds past its start time or the end of its wait, and
    `overdue_note` saying so)."""
    row = {
        "id": str(job.id),
        "workflow": job.workflow_name,
        "status": job.status.name,
        "step": _step_label(ergate, job),
        "percent": round(job.percent_completed, 1),
    }
    late = overdue_by(job, ergate.settings)
    if late is not None:
        row["overdue"] = round(late, 1)
        row["overdue_note"] = overdue_note(job, ergate.settings)
    wait = waiting_for(ergate.runtime.store, job)
    if wait is not None:
        row["parked"] = wait
    return row


def _status_text(row: dict[str, Any]) -> str:
    """The status as `list` and `watch` show it, with the overdue hint."""
    if row.get("parked") is not None:
        wait = row["parked"]
        why = "paused" if wait["reason"] == "paused" else f"{wait['ahead']} ahead of it"
        return f"{row['status']} (parked: {why})"
    note = row.get("overdue_note")
    return str(row["status"]) if note is None else f"{row['status']} ({note})"


@ergate.command(name="list", **COMMAND)
@option(
    "--status",
    "statuses",
    group="Filters",
    multiple=True,
    type=click.Choice(_STATUS_NAMES, case_sensitive=False),
    help="Only jobs in this status (repeatable).",
)
@option("--workflow", group="Filters", help="Only jobs of this workflow.")
@option(
    "--since",
    group="Filters",
    metavar="WHEN",
    help="Only jobs submitted since: a duration (30s, 15m, 1h, 2d, 1w) or a date or time.",
)
@option(
    "--tag",
    "tags",
    group="Filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only jobs with this tag (repeatable: all must match).",
)
@option(
    "--parent",
    group="Filters",
    metavar="JOB_ID",
    help="The fan-out children of this job, in order.",
)
@option("--concurrency-key", "key", group="Filters", help="Only jobs of this concurrency key.")
@option(
    "--limit",
    group="Output",
    type=click.IntRange(min=1, max=MAX_LIMIT),
    default=50,
    show_default=True,
    help="At most this many jobs.",
)
@option("--json", "as_json", group="Output", is_flag=True, help="One JSON array of the jobs.")
@click.pass_context
def list_jobs(
    ctx: click.Context,
    statuses: Sequence[str],
    workflow: str | None,
    since: str | None,
    tags: Sequence[str],
    key: str | None,
    limit: int,
    parent: str | None,
    as_json: bool,
) -> None:
    """Jobs newest first, finished ones too until they expire."""
    ergate = binding(ctx)
    when = since_arg(since)
    with input_errors():
        page = ergate.list_jobs(
            status=[name.upper() for name in statuses] or None,
            workflow=workflow,
            since=when,
            tags=tags_arg(tags),
            limit=limit,
            parent=parent,
            concurrency_key=key,
        )
    rows = [_summary(ergate, job) for job in page.jobs]
    if as_json:
        out(ctx, json.dumps(rows))
        return
    _print_rows(ctx, rows)
    if page.next_cursor is not None:
        note(ctx, f"(first {len(rows)} shown; --limit shows more)")


def _print_rows(ctx: click.Context, rows: list[dict[str, Any]]) -> None:
    """A table of jobs, the status coloured on a terminal."""
    keys = ("id", "workflow", "status", "step", "percent")
    cells = [{key: key.upper() for key in keys}]
    cells += [
        {
            "id": str(row["id"]),
            "workflow": str(row["workflow"]),
            "status": _status_text(row),
            "step": str(row["step"]),
            "percent": f"{row['percent']}%",
        }
        for row in rows
    ]
    widths = {key: max(len(cell[key]) for cell in cells) for key in keys}
    for number, cell in enumerate(cells):
        padded = {key: cell[key].ljust(widths[key]) for key in keys}
        if number:  # not the header
            padded["status"] = status_text(ctx, rows[number - 1]["status"], padded["status"])
        out(ctx, "  ".join(padded[key] for key in keys).rstrip())
    if not rows:
        note(ctx, "(no jobs)")


@ergate.command(**COMMAND)
@click.argument("job_id")
@option("--json", "as_json", group="Output", is_flag=True, help="The job as stored, as JSON.")
@click.pass_context
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Every field of a job, and its error with the traceback when it failed.

    With --json, the job as stored, plus `overdue` (seconds) and `overdue_note` when beat
    has not released it on time.
    """
    ergate = binding(ctx)
    job = found_job(ergate, job_id)
    document = job.model_dump(mode="json")
    if as_json:
        late = overdue_by(job, ergate.settings)
        if late is not None:
            document["overdue"] = round(late, 1)
            document["overdue_note"] = overdue_note(job, ergate.settings)
        out(ctx, json.dumps(document, indent=2))
        return
    error = document.pop("error", None)
    for name, value in document.items():
        if name == "status":
            hint = overdue_note(job, ergate.settings)
            shown = job.status.name if hint is None else f"{job.status.name} ({hint})"
            value = status_text(ctx, job.status.name, shown)
        elif name == "current_step":
            value = _step_label(ergate, job)
        elif name == "parked" and job.parked:
            value = describe_wait(waiting_for(ergate.runtime.store, job)) or value
        elif name == "wait" and job.wait is not None:
            verb = "waits for" if job.status is JobStatus.SCHEDULED else "waited for"
            value = f"{verb} {job.wait.describe()}"
        shown = value if isinstance(value, str) else json.dumps(value)
        out(ctx, f"{name:<22}{shown}")
    if error is not None:
        step = f" in step {error['step']}" if error.get("step") else ""
        out(ctx, f"{'error':<22}{error['type']}{step}: {error['message']}")
        if error.get("traceback"):
            out(ctx, "")
            out(ctx, error["traceback"].rstrip("\n"))
    if job.fan_out is not None:
        _show_children(ctx, ergate, job)


#: Children `show` lists; `list --parent` pages through all of them.
_CHILDREN_SHOWN = 20


def _show_children(ctx: click.Context, ergate: ErgateCelery, job: Job) -> None:
    """The children of the job's fan-outs, with their status."""
    state = job.fan_out
    assert state is not None
    page = ergate.list_jobs(parent=str(job.id), limit=_CHILDREN_SHOWN)
    made = state.first + state.count
    out(ctx, "")
    out(ctx, f"children ({made}; {state.ended_count} of the last {state.count} ended)")
    _print_rows(ctx, [_summary(ergate, child) for child in page.jobs])
    if page.next_cursor is not None:
        note(ctx, f"(first {len(page.jobs)} shown; celery ergate list --parent {job.id})")


@ergate.command(**COMMAND)
@click.argument("job_id")
@option(
    "--interval",
    group="Output",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between reads.",
)
@click.pass_context
def watch(ctx: click.Context, job_id: str, interval: float) -> None:
    """Follow a job until it is final (progress bar on a terminal, lines otherwise).

    Exit code 0 when it COMPLETED, 1 when it failed, was aborted or cancelled.
    """
    ergate = binding(ctx)
    job = found_job(ergate, job_id)
    if sys.stdout.isatty():
        job = _watch_bar(ctx, ergate, job, interval)
    else:
        job = _watch_lines(ctx, ergate, job, interval)
    if job.error is not None:
        click.echo(f"error: {job.error.type}: {job.error.message}", err=True)
    ctx.exit(0 if job.status is JobStatus.COMPLETED else 1)


def _watch_lines(ctx: click.Context, ergate: ErgateCelery, job: Job, interval: float) -> Job:
    """Print a line whenever status, step or percent change."""
    last: tuple[Any, ...] | None = None
    while True:
        row = _summary(ergate, job)
        seen = (row["status"], row["step"], row["percent"], "overdue" in row)
        if seen != last:
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            status = status_text(ctx, row["status"], f"{_status_text(row):<10}")
            out(ctx, f"{stamp} {status} {row['step']} {row['percent']}%")
            last = seen
        if job.is_final:
            return job
        time.sleep(interval)
        job = found_job(ergate, str(job.id))


def _watch_bar(ctx: click.Context, ergate: ErgateCelery, job: Job, interval: float) -> Job:
    """A click progress bar moved by `percent_completed`."""
    shown = 0

    def describe(item: str | None) -> str:
        return item or ""

    with click.progressbar(
        length=100, label=f"job {job.id}", show_eta=False, item_show_func=describe
    ) as bar:
        while True:
            row = _summary(ergate, job)
            percent = int(job.percent_completed)
            bar.update(percent - shown, f"{_status_text(row)} {row['step']}")
            shown = percent
            if job.is_final:
                break
            time.sleep(interval)
            job = found_job(ergate, str(job.id))
    out(ctx, status_text(ctx, job.status.name))
    return job
