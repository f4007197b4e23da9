"""What every `celery ergate` command shares: the group, the binding of `celery -A proj`,
and reading the command line's values (bad input exits with code 2, saying what was wrong).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from ergate_celery.binding import ErgateCelery
from ergate_celery.exceptions import ErgateError, JobNotFoundError
from ergate_celery.model.job import Job

#: Above this many jobs, `retry --status` asks before retrying (unless --yes).
CONFIRM_ABOVE = 10
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@click.group()
def ergate() -> None:
    """Ergate workflows and jobs of the app given by `celery -A proj`."""


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
    """The ErgateCelery of the app given by `celery -A proj`."""
    app = getattr(ctx.obj, "app", None)
    if app is None:
        raise click.ClickException("run this as `celery -A <your app module> ergate ...`")
    try:
        return ErgateCelery.of(app)
    except ErgateError as exc:
        raise click.ClickException(f"{exc} (is -A pointing at the right module?)") from None


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
        raise BadInput(f"{name} is not valid JSON ({exc}): {text!r}") from None


def datetime_arg(text: str | None) -> datetime | None:
    """Parse `--at`; a naive time is UTC, as for `submit_job`."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(
            f"--at is not an ISO 8601 date and time: {text!r} (e.g. 2030-01-31T09:30:00+00:00)"
        ) from None


def since_arg(text: str | None) -> datetime | None:
    """`--since 1h` as the moment that long ago, or exit 2."""
    if text is None:
        return None
    number, unit = text[:-1], text[-1:].lower()
    if unit not in _UNITS or not number.isdigit():
        raise BadInput(f"--since {text!r} is not a duration: write 30s, 15m, 1h, 2d or 1w")
    return datetime.now(UTC) - timedelta(seconds=int(number) * _UNITS[unit])


def tags_arg(tags: Sequence[str]) -> dict[str, str] | None:
    """`--tag k=v` options as a dict, or exit 2."""
    found: dict[str, str] = {}
    for tag in tags:
        key, equals, value = tag.partition("=")
        if not equals or not key:
            raise BadInput(f"--tag {tag!r} is not KEY=VALUE")
        found[key] = value
    return found or None
