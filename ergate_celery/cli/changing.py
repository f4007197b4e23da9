"""`celery -A proj ergate submit|cancel|signal`: the commands that make a job or change one.

Exit codes as for every command (see `commands.py`): 1 when the job is not what was asked
(`cancel` of a finished job, `signal` of one that has ended), 2 for bad input.
"""

from __future__ import annotations

from collections.abc import Sequence

import click
from pydantic import ValidationError

from ergate_celery.cli.arguments import (
    COMMAND,
    BadInput,
    binding,
    ergate,
    found_job,
    input_errors,
    json_arg,
    moment_arg,
    note,
    option,
    out,
    status_text,
    tags_arg,
)
from ergate_celery.exceptions import ErgateError, JobNotFoundError, JobStateError
from ergate_celery.model.job_status import JobStatus


@ergate.command(**COMMAND)
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
    out(ctx, status_text(ctx, after.status.name))
    if after.status is JobStatus.CANCELLING:
        note(ctx, "the running step stops at its next progress report, or ends first")
    elif after.is_final and (before.is_final or after.status is not JobStatus.CANCELLED):
        note(ctx, f"job {job_id} had already finished as {after.status.name}; unchanged")
        ctx.exit(1)


@ergate.command(**COMMAND)
@click.argument("job_id")
@click.argument("name")
@option("--payload", "payload_json", group="Signal", metavar="JSON", help="The signal's payload.")
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
    out(ctx, status_text(ctx, job.status.name))


@ergate.command(**COMMAND)
@click.argument("workflow")
@option("--input", "input_json", group="Job", required=True, metavar="JSON", help="Initial input.")
@option("--context", "context_json", group="Job", metavar="JSON", help="The job's user_context.")
@option("--id", "job_id", group="Job", metavar="ID", help="The job id (default: a new UUID).")
@option(
    "--tag",
    "tags",
    group="Job",
    multiple=True,
    metavar="KEY=VALUE",
    help="A tag to find the job by (repeatable).",
)
@option(
    "--at",
    group="When",
    metavar="WHEN",
    help="Start then (SCHEDULED until): a date or time (naive is UTC), or a duration from now.",
)
@option(
    "--deadline",
    group="When",
    metavar="WHEN",
    help="FAILED if not started by then: a date or time, or a duration from now (e.g. 1h).",
)
@option(
    "--priority",
    group="When",
    type=click.IntRange(min=0, max=255),
    help="The priority of every step message (Celery's, 0-255; the broker decides the range).",
)
@click.pass_context
def submit(
    ctx: click.Context,
    workflow: str,
    input_json: str,
    context_json: str | None,
    job_id: str | None,
    tags: Sequence[str],
    at: str | None,
    deadline: str | None,
    priority: int | None,
) -> None:
    """Submit a job of WORKFLOW and print its id; nothing is submitted on bad input."""
    ergate = binding(ctx)
    initial = json_arg("--input", input_json)
    context = json_arg("--context", context_json)
    start = moment_arg("--at", at, ago=False)
    end = moment_arg("--deadline", deadline, ago=False)
    with input_errors(ErgateError, ValidationError, TypeError, ValueError, RecursionError):
        job = ergate.submit_job(
            workflow,
            initial_input_value=initial,
            user_context=context,
            requested_start_time=start,
            id=job_id,
            priority=priority,
            deadline=end,
            tags=tags_arg(tags),
        )
    out(ctx, str(job.id))
