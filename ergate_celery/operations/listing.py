"""Listing stored jobs for the operations that act on many: every job a query matches, page
by page (one page is `ErgateCelery.list_jobs`, read straight from the store); and reading the
moments a person types for a filter or a start time (`1h`, `2026-11-30`), as the CLI and the
console both take them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

from ergate_celery.exceptions import InvalidInputError
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.stores.listing import JobQuery
from ergate_celery.worker.runtime import Runtime

#: What `status=` of `list_jobs` and `retry_jobs` takes: one status, several, or None (any).
StatusFilter = JobStatus | str | Iterable[JobStatus | str] | None

_PAGE = 500
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: What `parse_moment` takes, for the messages that refuse a value.
MOMENT_FORMS = (
    "a duration (30s, 15m, 1h, 2d, 1w) or an ISO 8601 date or time (2026-11-30, "
    "2026-11-30T09:00, 2026-11-30T09:00+01:00; without an offset it is UTC)"
)


def every_job(rt: Runtime, query: JobQuery) -> Iterator[Job]:
    """Every job matching `query`, newest first, page by page."""
    cursor = None
    while True:
        page = rt.store.list_jobs(query, _PAGE, cursor)
        yield from page.jobs
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def parse_moment(name: str, text: str, now: datetime, *, ago: bool) -> datetime:
    """The moment `text` stands for, in UTC: a duration before `now` (`ago`, as for `since`)
    or after it (as for a start time or a deadline), or an ISO 8601 date or time.
    `InvalidInputError` naming `name` says what to write instead."""
    cleaned = text.strip()
    duration = _DURATION.fullmatch(cleaned.lower())
    try:
        if duration is not None:
            delta = timedelta(seconds=int(duration[1]) * _UNITS[duration[2]])
            moment = now - delta if ago else now + delta
        else:
            moment = datetime.fromisoformat(cleaned)
            moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidInputError(
            f"{name} {cleaned[:40]!r} is out of range: write a shorter duration (e.g. 30d "
            "or 52w), or a date between 0001-01-02 and 9999-12-30"
        ) from None
    except ValueError:
        raise InvalidInputError(f"{name} {cleaned[:40]!r} is not {MOMENT_FORMS}") from None
