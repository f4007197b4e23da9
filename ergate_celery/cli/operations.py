"""`celery ergate retry | pause | resume`: the day-2 commands of the `celery ergate` group."""

from __future__ import annotations

from collections.abc import Sequence

import click

from ergate_celery.cli.arguments import (
    COMMAND,
    CONFIRM_ABOVE,
    BadInput,
    binding,
    ergate,
    input_errors,
    note,
    option,
    out,
    since_arg,
)
from ergate_celery.exceptions import JobNotFoundError, JobStateError, UnknownStepError
from ergate_celery.model.job_status import RETRYABLE_STATUSES
from ergate_celery.operations.listing import every_job
from ergate_celery.operations.retrying import retry_query


@ergate.command(**COMMAND)
@click.argument("job_id", required=False)
@option(
    "--status",
    "statuses",
    group="Many jobs",
    multiple=True,
    type=click.Choice([s.name for s in sorted(RETRYABLE_STATUSES)], case_sensitive=False),
    help="Retry every job in this status (repeatable) instead of one JOB_ID.",
)
@option("--workflow", group="Many jobs", help="With --status: only jobs of this workflow.")
@option(
    "--since",
    group="Many jobs",
    metavar="WHEN",
    help="With --status: only jobs submitted since (1h, 2d, or a date or time).",
)
@option("--yes", group="Many jobs", is_flag=True, help=f"Do not ask above {CONFIRM_ABOVE} jobs.")
@click.pass_context
def retry(
    ctx: click.Context,
    job_id: str | None,
    statuses: Sequence[str],
    workflow: str | None,
    since: str | None,
    yes: bool,
) -> None:
    """Send a failed, aborted or cancelled job back to the step it stopped at.

    `retry JOB_ID`, or `retry --status FAILED [--workflow W] [--since 1d]` for many.
    """
    ergate = binding(ctx)
    if (job_id is None) == (not statuses):
        raise BadInput("give either a JOB_ID or --status (with --workflow / --since)")
    if job_id is not None:
        try:
            job = ergate.retry_job(job_id)
        except JobNotFoundError as exc:
            raise BadInput(str(exc)) from None
        except (JobStateError, UnknownStepError) as exc:
            raise click.ClickException(str(exc)) from None
        out(ctx, f"{job.id} {job.status.name} at step {job.current_step_name}")
        return
    with input_errors():
        if workflow is not None:
            ergate.workflow(workflow)
        query = retry_query([name.upper() for name in statuses], workflow, since_arg(since))
    ids = [str(job.id) for job in every_job(ergate.runtime, query)]
    if len(ids) > CONFIRM_ABOVE and not yes:
        click.confirm(f"Retry {len(ids)} jobs?", abort=True)
    retried = 0
    for one in ids:
        try:
            ergate.retry_job(one)
        except (JobStateError, JobNotFoundError, UnknownStepError):
            continue  # retried or changed meanwhile, or its step is gone
        retried += 1
    out(ctx, f"retried {retried} jobs")


@ergate.command(**COMMAND)
@click.argument("workflow")
@click.pass_context
def pause(ctx: click.Context, workflow: str) -> None:
    """Start no step of WORKFLOW until `resume` (running steps finish; submits are kept)."""
    with input_errors():
        ergate = binding(ctx)
        changed = ergate.pause_workflow(workflow)
    out(ctx, f"{workflow} paused" if changed else f"{workflow} was already paused")
    note(
        ctx,
        f"jobs submitted from now on wait, parked, until resume; steps already queued stop "
        f"within {ergate.settings.pause_refresh:g} s (ergate_pause_refresh), running steps "
        "finish",
    )


@ergate.command(**COMMAND)
@click.argument("workflow")
@click.pass_context
def resume(ctx: click.Context, workflow: str) -> None:
    """Resume WORKFLOW and publish the jobs parked while it was paused."""
    with input_errors():
        published = binding(ctx).resume_workflow(workflow)
    out(ctx, f"{workflow} resumed; {published} parked jobs published")
