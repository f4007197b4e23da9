"""`celery -A proj ergate ...`: list, show, submit, cancel, watch and graph jobs and workflows.

Installed as a Celery CLI extension (entry point group `celery.commands`), so every command
works on the app given by `celery -A proj`. Exit codes: 0 success; 1 the job is not (or will
not be) what was asked (`cancel` of a finished job, `watch` of a job that did not complete);
2 bad input (unknown workflow or job id, invalid JSON, input the workflow rejects).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
from pydantic import ValidationError

from .binding import ErgateCelery
from .exceptions import ErgateError, JobNotFoundError
from .job import Job
from .job_status import JobStatus
from .paths import GoToEndPath, GoToStepPath, NextStepPath
from .workflow import Workflow

#: Reading the job index "up to the end of time" lists every indexed job.
_FAR_FUTURE = datetime.max.replace(tzinfo=UTC)
#: `list` reads at most this many index entries per kind (more when --limit is larger).
SCAN_LIMIT = 10_000
#: The statuses the job index holds: `list` can show these (finished jobs are not indexed).
LISTABLE = (JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)
_STATUS_NAMES = [status.name for status in JobStatus]


class BadInput(click.ClickException):
    """A usage error that is the caller's input, not the command line: exit code 2."""

    exit_code = 2


def _binding(ctx: click.Context) -> ErgateCelery:
    """The ErgateCelery of the app given by `celery -A proj`."""
    app = getattr(ctx.obj, "app", None)
    if app is None:
        raise click.ClickException("run this as `celery -A <your app module> ergate ...`")
    try:
        return ErgateCelery.of(app)
    except ErgateError as exc:
        raise click.ClickException(f"{exc} (is -A pointing at the right module?)") from None


def _get(ergate: ErgateCelery, job_id: str) -> Job:
    """The job, or a clear exit 2 when no job has that id."""
    try:
        return ergate.get_job(job_id)
    except JobNotFoundError as exc:
        raise BadInput(str(exc)) from None


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
    """The one-line view of a job that `list` and `watch` print."""
    return {
        "id": str(job.id),
        "workflow": job.workflow_name,
        "status": job.status.name,
        "step": _step_label(ergate, job),
        "percent": round(job.percent_completed, 1),
    }


def _json_arg(name: str, text: str | None) -> Any:
    """Parse a JSON option value, or exit 2 saying what is wrong with it."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{name} is not valid JSON ({exc}): {text!r}") from None


def _datetime_arg(text: str | None) -> datetime | None:
    """Parse `--at`; a naive time is UTC, as for `submit_job`."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(
            f"--at is not an ISO 8601 date and time: {text!r} (e.g. 2030-01-31T09:30:00+00:00)"
        ) from None


@click.group()
def ergate() -> None:
    """Ergate workflows and jobs of the app given by `celery -A proj`."""


@ergate.command(name="list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(_STATUS_NAMES, case_sensitive=False),
    help="Only jobs in this status (repeatable): SCHEDULED, QUEUED, RUNNING or CANCELLING.",
)
@click.option("--workflow", help="Only jobs of this workflow.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_jobs(
    ctx: click.Context,
    statuses: Sequence[str],
    workflow: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Unfinished jobs (scheduled, queued, running, cancelling), read from the job index.

    Finished jobs are not indexed, so they are not listed; `show JOB_ID` reads any job.
    """
    ergate = _binding(ctx)
    wanted = {JobStatus[name.upper()] for name in statuses} or set(LISTABLE)
    unlisted = sorted(s.name for s in wanted if s not in LISTABLE)
    if unlisted:
        raise BadInput(
            f"cannot list {', '.join(unlisted)} jobs: only unfinished jobs are indexed "
            "(SCHEDULED, QUEUED, RUNNING, CANCELLING); use `show JOB_ID` for a finished job"
        )
    store = ergate.store
    queries: list[Callable[[datetime, int], list[str]]] = []
    if wanted & {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING}:
        queries.append(store.stale)
    if JobStatus.SCHEDULED in wanted:
        queries.append(store.due)
    scan = max(limit, SCAN_LIMIT)  # ids are cheap; records are read only until `limit` match
    rows: list[dict[str, Any]] = []
    truncated = False
    for query in queries:
        ids = query(_FAR_FUTURE, scan)
        truncated = truncated or len(ids) >= scan
        for job_id in ids:
            job = store.get(job_id)
            if job is None or job.status not in wanted:
                continue
            if workflow is not None and job.workflow_name != workflow:
                continue
            rows.append(_summary(ergate, job))
            if len(rows) >= limit:
                break
        if len(rows) >= limit:
            break
    _print_rows(rows, as_json)
    if truncated and len(rows) < limit:
        click.echo(f"(read only the first {SCAN_LIMIT} index entries)", err=True)


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    """A table of jobs (or JSON lines)."""
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    headers = {key: key.upper() for key in ("id", "workflow", "status", "step", "percent")}
    cells = [headers]
    cells += [{k: f"{v}%" if k == "percent" else str(v) for k, v in row.items()} for row in rows]
    widths = {key: max(len(str(cell[key])) for cell in cells) for key in headers}
    for cell in cells:
        click.echo("  ".join(str(cell[key]).ljust(widths[key]) for key in headers).rstrip())
    if not rows:
        click.echo("(no unfinished jobs)", err=True)


@ergate.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="The job as stored, as JSON.")
@click.pass_context
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Every field of a job, and its error with the traceback when it failed."""
    ergate = _binding(ctx)
    job = _get(ergate, job_id)
    document = job.model_dump(mode="json")
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    error = document.pop("error", None)
    for name, value in document.items():
        if name == "status":
            value = job.status.name
        elif name == "current_step":
            value = _step_label(ergate, job)
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
    ergate = _binding(ctx)
    before = _get(ergate, job_id)
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
    ergate = _binding(ctx)
    initial = _json_arg("--input", input_json)
    context = _json_arg("--context", context_json)
    start = _datetime_arg(at)
    try:
        job = ergate.submit_job(
            workflow,
            initial_input_value=initial,
            user_context=context,
            requested_start_time=start,
            id=job_id,
        )
    except (ErgateError, ValidationError, TypeError, ValueError) as exc:
        raise BadInput(_one_line(exc)) from None
    click.echo(str(job.id))


def _one_line(exc: BaseException) -> str:
    """An exception as `Type: message`, pydantic's multi-line messages included."""
    return f"{type(exc).__name__}: {exc}"


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
    ergate = _binding(ctx)
    job = _get(ergate, job_id)
    if sys.stdout.isatty():
        job = _watch_bar(ergate, job, interval)
    else:
        job = _watch_lines(ergate, job, interval)
    if job.error is not None:
        click.echo(f"error: {job.error.type}: {job.error.message}", err=True)
    ctx.exit(0 if job.status is JobStatus.COMPLETED else 1)


def _watch_lines(ergate: ErgateCelery, job: Job, interval: float) -> Job:
    """Print a line whenever status, step or percent change."""
    last: dict[str, Any] | None = None
    while True:
        row = _summary(ergate, job)
        if row != last:
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            click.echo(f"{stamp} {row['status']:<10} {row['step']} {row['percent']}%")
            last = row
        if job.is_final:
            return job
        time.sleep(interval)
        job = _get(ergate, str(job.id))


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
            bar.update(percent - shown, f"{row['status']} {row['step']}")
            shown = percent
            if job.is_final:
                break
            time.sleep(interval)
            job = _get(ergate, str(job.id))
    click.echo(f"{job.status.name}")
    return job


@ergate.command()
@click.argument("workflow")
@click.pass_context
def graph(ctx: click.Context, workflow: str) -> None:
    """A Mermaid flowchart of WORKFLOW's steps and their declared paths."""
    ergate = _binding(ctx)
    try:
        found = ergate.workflow(workflow)
    except ErgateError as exc:
        raise BadInput(str(exc)) from None
    click.echo(mermaid(found))


def mermaid(workflow: Workflow) -> str:
    """`flowchart TD`: next-step edges, labelled go-to edges, and go-to-end edges to END."""
    lines = ["flowchart TD", f"    %% workflow {workflow.unique_name}"]
    for step in workflow:
        lines.append(f'    s{step.index}["{_mermaid_text(step.name)}"]')
    lines.append("    END([END])")
    seen: set[str] = set()
    for step in workflow:
        for path in step.paths:
            target = workflow.next_index(step.index, path)
            node = "END" if target >= len(workflow) else f"s{target}"
            if isinstance(path, GoToStepPath):
                edge = f"s{step.index} -->|GoToStep| {node}"
            elif isinstance(path, GoToEndPath):
                edge = f"s{step.index} -->|GoToEnd| {node}"
            elif isinstance(path, NextStepPath):
                edge = f"s{step.index} --> {node}"
            else:
                _unknown_path(path)
            if edge not in seen:
                seen.add(edge)
                lines.append(f"    {edge}")
    return "\n".join(lines)


def _mermaid_text(text: str) -> str:
    """Text safe inside a quoted Mermaid label."""
    return text.replace('"', "#quot;")


def _unknown_path(path: object) -> NoReturn:
    raise click.ClickException(f"unknown path hint {path!r}")
