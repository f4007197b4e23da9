"""What every `celery ergate` command shares: the group, the binding of `celery -A proj`,
printing as Celery's commands print (`celery --no-color`, `celery --quiet`), and reading the
command line's values (bad input exits with code 2, saying what was wrong).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from celery.bin.base import CeleryCommand, CeleryOption

from ergate_celery.binding import ErgateCelery
from ergate_celery.exceptions import ErgateError, JobNotFoundError
from ergate_celery.model.job import Job
from ergate_celery.operations.listing import parse_moment

Decorated = TypeVar("Decorated", bound=Callable[..., Any])

#: Above this many jobs, `retry --status` asks before retrying (unless --yes).
CONFIRM_ABOVE = 10
#: The colour of a status name on a terminal (others are printed plain).
STATUS_COLORS = {
    "COMPLETED": "green",
    "FAILED": "red",
    "ABORTED": "yellow",
    "CANCELLING": "yellow",
    "CANCELLED": "yellow",
    "RUNNING": "cyan",
}
#: Every `celery ergate` command is a Celery command: its options grouped in the help as
#: Celery's own commands group theirs.
COMMAND = {"cls": CeleryCommand}


@click.group()
def ergate() -> None:
    """Ergate workflows and jobs of the app given by `celery -A proj`."""


def option(*names: str, group: str, **kwargs: Any) -> Callable[[Decorated], Decorated]:
    """A click option shown under `group` in the command's help, as Celery shows its own."""
    decorate: Callable[[Decorated], Decorated] = click.option(
        *names, cls=CeleryOption, help_group=group, **kwargs
    )
    return decorate


class BadInput(click.ClickException):
    """A usage error that is the caller's input, not the command line: exit code 2."""

    exit_code = 2


@contextmanager
def input_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Turn an error of `kinds` (default: any ErgateError) into exit code 2, naming it."""
    caught = kinds or (ErgateError,)
    try:
        yield
    except caught as exc:
        raise BadInput(f"{type(exc).__name__}: {exc}") from None


def binding(ctx: click.Context) -> ErgateCelery:
    """The ErgateCelery of the app given by `celery -A proj`, its workflows loaded (a
    workflows module that cannot be imported is an error line and exit code 2)."""
    app = getattr(ctx.obj, "app", None)
    if app is None:
        raise click.ClickException("run this as `celery -A <your app module> ergate ...`")
    try:
        found = ErgateCelery.of(app)
    except ErgateError as exc:
        raise click.ClickException(f"{exc} (is -A pointing at the right module?)") from None
    try:
        found.workflows  # noqa: B018 - imports the autodiscovered workflows modules now
    except Exception as exc:
        where = f" ({exc.filename}, line {exc.lineno})" if isinstance(exc, SyntaxError) else ""
        raise BadInput(
            f"the workflows of app {app.main!r} cannot be imported: {type(exc).__name__}: "
            f"{exc}{where}; fix that module (a worker would not start with it either)"
        ) from None
    return found


def found_job(ergate: ErgateCelery, job_id: str) -> Job:
    """The job, or a clear exit 2 when no job has that id."""
    try:
        return ergate.get_job(job_id)
    except JobNotFoundError as exc:
        raise BadInput(str(exc)) from None


def json_arg(name: str, text: str | None) -> Any:
    """Parse a JSON option value, or exit 2 saying what is wrong with it."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{name} is not valid JSON ({exc}): {text[:200]!r}") from None
    except RecursionError:
        raise BadInput(
            f"{name} nests lists or objects too deeply to read; flatten it (a job's values "
            "should nest a few levels, not thousands)"
        ) from None


def moment_arg(name: str, text: str | None, *, ago: bool) -> datetime | None:
    """A duration (`1h`: that long ago if `ago`, else from now) or an ISO 8601 date or time
    (naive is UTC), as the console reads them; exit 2 saying what to write."""
    if text is None:
        return None
    with input_errors():
        return parse_moment(name, text, datetime.now(UTC), ago=ago)


def since_arg(text: str | None) -> datetime | None:
    """`--since 1h` or `--since 2026-11-30`: the moment, or exit 2."""
    return moment_arg("--since", text, ago=True)


def tags_arg(tags: Sequence[str]) -> dict[str, str] | None:
    """`--tag k=v` options as a dict, or exit 2."""
    found: dict[str, str] = {}
    for tag in tags:
        key, equals, value = tag.partition("=")
        if not equals or not key:
            raise BadInput(f"--tag {tag!r} is not KEY=VALUE (e.g. --tag order=A-17)")
        found[key] = value
    return found or None


# Printing -----------------------------------------------------------------------------------


def _no_color(ctx: click.Context) -> bool:
    return bool(getattr(ctx.obj, "no_color", False))


def status_text(ctx: click.Context, name: str, shown: str | None = None) -> str:
    """`shown` (default: the status name) coloured by the status, unless --no-color."""
    text = name if shown is None else shown
    color = STATUS_COLORS.get(name)
    if color is None or _no_color(ctx):
        return text
    return click.style(text, fg=color, bold=name == "FAILED")


def out(ctx: click.Context, text: str) -> None:
    """A line of the command's output (stdout)."""
    click.echo(text, color=False if _no_color(ctx) else None)


def note(ctx: click.Context, text: str) -> None:
    """A remark for a person (stderr), left out under `celery --quiet`."""
    if not getattr(ctx.obj, "quiet", False):
        click.echo(text, err=True, color=False if _no_color(ctx) else None)
