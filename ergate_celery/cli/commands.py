"""`celery -A proj ergate ...`: list, show, submit, cancel, retry, signal, watch and graph jobs;
pause and resume workflows.

Installed as a Celery CLI extension (entry point group `celery.commands`), so every command
works on the app given by `celery -A proj`. Exit codes: 0 success; 1 the job is not (or will
not be) what was asked (`cancel` of a finished job, `retry` of a job that did not stop,
`watch` of a job that did not complete); 2 bad input (unknown workflow or job id, invalid
JSON, a duration or tag that does not parse, input the workflow rejects).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
from pydantic import ValidationError

from ergate_celery.binding import ErgateCelery
from ergate_celery.cli.arguments import (
    BadInput,
    binding,
    datetime_arg,
    ergate,
    found_job,
    input_errors,
    json_arg,
    since_arg,
    tags_arg,
)
from ergate_celery.exceptions import ErgateError, JobNotFoundError, JobStateError
from ergate_celery.model.graph import mermaid
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
    beat has not released, in seconds past its start time)."""
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
    wait = waiting_for(ergate.runtime.store, job)
    if wait is not None:
        row["parked"] = wait
    return row


def _status_text(row: dict[str, Any]) -> str:
    """The status as `list` and `watch` show it, with the overdue hint."""
    late = row.get("overdue")
    if row.get("parked") is not None:
        wait = row["parked"]
        why = "paused" if wait["reason"] == "paused" else f"{wait['ahead']} ahead of it"
        return f"{row['status']} (parked: {why})"
    if late is None:
        return str(row["status"])
    return f"{row['status']} (overdue by {late:.0f} s — is celery beat running?)"


@ergate.command(name="list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(_STATUS_NAMES, case_sensitive=False),
    help="Only jobs in this status (repeatable).",
)
@click.option("--workflow", help="Only jobs of this workflow.")
@click.option(
    "--since", metavar="DURATION", help="Only jobs submitted within it: 30s, 15m, 1h, 2d."
)
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Only jobs with this tag.")
@click.option("--concurrency-key", "key", help="Only jobs of this concurrency key.")
@click.option("--limit", type=click.IntRange(min=1, max=MAX_LIMIT), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of the jobs.")
@click.pass_context
def list_jobs(
    ctx: click.Context,
    statuses: Sequence[str],
    workflow: str | None,
    since: str | None,
    tags: Sequence[str],
    key: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Jobs newest first, finished ones too until they expire."""
    ergate = binding(ctx)
    with input_errors():
        page = ergate.list_jobs(
            status=[name.upper() for name in statuses] or None,
            workflow=workflow,
            since=since_arg(since),
            tags=tags_arg(tags),
            limit=limit,
            concurrency_key=key,
        )
    rows = [_summary(ergate, job) for job in page.jobs]
    if as_json:
        click.echo(json.dumps(rows))
        return
    _print_rows(rows, as_json)
    if page.next_cursor is not None:
        click.echo(f"(first {len(rows)} shown; --limit shows more)", err=True)


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    """A table of jobs."""
    headers = {key: key.upper() for key in ("id", "workflow", "status", "step", "percent")}
    cells = [headers]
    cells += [
        {
            **{k: f"{v}%" if k == "percent" else str(v) for k, v in row.items()},
            "status": _status_text(row),
        }
        for row in rows
    ]
    widths = {key: max(len(str(cell[key])) for cell in cells) for key in headers}
    for cell in cells:
        click.echo("  ".join(str(cell[key]).ljust(widths[key]) for key in headers).rstrip())
    if not rows:
        click.echo("(no jobs)", err=True)


@ergate.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="The job as stored, as JSON.")
@click.pass_context
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Every field of a job, and its error with the traceback when it failed."""
    ergate = binding(ctx)
    job = found_job(ergate, job_id)
    document = job.model_dump(mode="json")
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    error = document.pop("error", None)
    for name, value in document.items():
        if name == "status":
            note = overdue_note(job, ergate.settings)
            value = job.status.name if note is None else f"{job.status.name} ({note})"
        elif name == "current_step":
            value = _step_label(ergate, job)
        elif name == "parked" and job.parked:
            value = describe_wait(waiting_for(ergate.runtime.store, job)) or value
        elif name == "wait" and job.wait is not None:
            verb = "waits for" if job.status is JobStatus.SCHEDULED else "waited for"
            value = f"{verb} {job.wait.describe()}"
        shown = value if isinstance(value, str) else json.dumps(value)
        click.echo(f"{name:<22}{shown}")
    if error is not None:
        step = f" in step {error['step']}" if error.get("step") else ""
        click.echo(f"{'error':<22}{error['type']}{step}: {error['message']}")
        if error.get("traceback"):
            click.echo("")
            click.echo(error["traceback"].rstrip("\n"))


@ergate.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job and print its status; exit code 1 when it had already finished."""
    ergate = binding(ctx)
    before = found_job(ergate, job_id)
    try:
        after = ergate.cancel_job(job_id)
    except JobNotFoundError as exc:
        raise BadInput(str(exc)) from None
    click.echo(after.status.name)
    if after.status is JobStatus.CANCELLING:
        click.echo("the running step ends first; no further step runs", err=True)
    elif after.is_final and (before.is_final or after.status is not JobStatus.CANCELLED):
        click.echo(f"job {job_id} had already finished as {after.status.name}; unchanged", err=True)
        ctx.exit(1)


@ergate.command()
@click.argument("job_id")
@click.argument("name")
@click.option("--payload", "payload_json", metavar="JSON", help="The signal's payload.")
@click.pass_context
def signal(ctx: click.Context, job_id: str, name: str, payload_json: str | None) -> None:
    """Send signal NAME to a job and print its status (QUEUED: it was waiting for it).

    Exit code 1 when the job has already finished; 2 for bad input or an unknown job.
    """
    ergate = binding(ctx)
    payload = json_arg("--payload", payload_json)
    try:
        job = ergate.signal_job(job_id, name, payload)
    except JobStateError as exc:
        click.echo(str(exc), err=True)
        ctx.exit(1)
    except (ErgateError, TypeError, ValueError) as exc:
        raise BadInput(f"{type(exc).__name__}: {exc}") from None
    click.echo(job.status.name)


@ergate.command()
@click.argument("workflow")
@click.option("--input", "input_json", required=True, metavar="JSON", help="Initial input.")
@click.option("--context", "context_json", metavar="JSON", help="The job's user_context.")
@click.option("--at", metavar="ISO-DATETIME", help="Start then (SCHEDULED until; naive = UTC).")
@click.option("--id", "job_id", metavar="ID", help="The job id (default: a new UUID).")
@click.pass_context
def submit(
    ctx: click.Context,
    workflow: str,
    input_json: str,
    context_json: str | None,
    at: str | None,
    job_id: str | None,
) -> None:
    """Submit a job of WORKFLOW and print its id; nothing is submitted on bad input."""
    ergate = binding(ctx)
    initial = json_arg("--input", input_json)
    context = json_arg("--context", context_json)
    start = datetime_arg(at)
    with input_errors(ErgateError, ValidationError, TypeError, ValueError):
        job = ergate.submit_job(
            workflow,
            initial_input_value=initial,
            user_context=context,
            requested_start_time=start,
            id=job_id,
        )
    click.echo(str(job.id))


@ergate.command()
@click.argument("job_id")
@click.option(
    "--interval",
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
        job = _watch_bar(ergate, job, interval)
    else:
        job = _watch_lines(ergate, job, interval)
    if job.error is not None:
        click.echo(f"error: {job.error.type}: {job.error.message}", err=True)
    ctx.exit(0 if job.status is JobStatus.COMPLETED else 1)


def _watch_lines(ergate: ErgateCelery, job: Job, interval: float) -> Job:
    """Print a line whenever status, step or percent change."""
    last: tuple[Any, ...] | None = None
    while True:
        row = _summary(ergate, job)
        seen = (row["status"], row["step"], row["percent"], "overdue" in row)
        if seen != last:
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            click.echo(f"{stamp} {_status_text(row):<10} {row['step']} {row['percent']}%")
            last = seen
        if job.is_final:
            return job
        time.sleep(interval)
        job = found_job(ergate, str(job.id))


def _watch_bar(ergate: ErgateCelery, job: Job, interval: float) -> Job:
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
    click.echo(f"{job.status.name}")
    return job


@ergate.command()
@click.argument("workflow")
@click.pass_context
def graph(ctx: click.Context, workflow: str) -> None:
    """A Mermaid flowchart of WORKFLOW's steps and their declared paths."""
    ergate = binding(ctx)
    try:
        found = ergate.workflow(workflow)
    except ErgateError as exc:
        raise BadInput(str(exc)) from None
    click.echo(mermaid(found))
