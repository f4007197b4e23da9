"""Listing jobs newest first: the query, the page, the cursor, and the paging loop that every
store shares (each store supplies `_listed`, the next entries of its listing index).

Every job is listed by `submitted_at` from its creation until its record expires: a store
keeps a listing index written in the same atomic write as the record (on Redis sorted sets per
status, workflow and tag; on SQL a table). Expired records leave entries behind on Redis; they
are trimmed when a listing meets them, as rq's registries clean themselves before a read.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from ergate_celery.exceptions import InvalidInputError
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus

#: A listing reads at most this many index entries per job asked for, so that the cost of a
#: page follows its size even when a filter the index does not serve rejects most entries; a
#: page may then hold fewer jobs than asked, with `next_cursor` set to read on.
SCAN_FACTOR = 10
MAX_LIMIT = 1000

#: Limits on `submit_job(tags=...)`.
MAX_TAGS = 20
MAX_TAG_KEY = 64
MAX_TAG_VALUE = 200


class Position(NamedTuple):
    """A place in the newest-first order: (submitted_at, job id), both descending."""

    at: datetime
    job_id: str

    def before(self, other: Position) -> bool:
        """Whether this entry comes after `other` in the newest-first order."""
        return (self.at, self.job_id) < (other.at, other.job_id)


@dataclass(frozen=True)
class JobQuery:
    """What `list_jobs` filters on; None means any."""

    statuses: frozenset[JobStatus] | None = None
    workflow: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    concurrency_key: str | None = None

    def matches(self, job: Job) -> bool:
        """Whether `job` is one this query asks for (checked on every listed record)."""
        if self.statuses is not None and job.status not in self.statuses:
            return False
        if self.workflow is not None and job.workflow_name != self.workflow:
            return False
        at = job.submitted_at
        if at is None:
            return self.since is None and self.until is None
        if self.since is not None and at < self.since:
            return False
        if self.until is not None and at > self.until:
            return False
        if self.concurrency_key is not None and job.concurrency_key != self.concurrency_key:
            return False
        return all(job.tags.get(key) == value for key, value in self.tags.items())


@dataclass(frozen=True)
class JobPage:
    """One page of `list_jobs`: its jobs, newest first, and the cursor of the next page (None
    when there is none)."""

    jobs: list[Job]
    next_cursor: str | None


#: A store's next `count` listing entries after `after` (None: from the newest) for `query`,
#: newest first, each with its job (None when its record is gone; the store trims it).
Listed = Callable[[JobQuery, Position | None, int], list[tuple[Position, Job | None]]]


def list_page(listed: Listed, query: JobQuery, limit: int, cursor: str | None) -> JobPage:
    """Fill one page from `listed`, reading at most `limit * SCAN_FACTOR` entries."""
    position = decode_cursor(cursor)
    budget = limit * SCAN_FACTOR
    jobs: list[Job] = []
    while budget > 0:
        want = min(limit - len(jobs) + 1, budget)
        entries = listed(query, position, want)
        for entry, job in entries:
            if len(jobs) == limit:  # an entry follows the page: there may be more
                return JobPage(jobs, encode_cursor(position))
            position = entry
            budget -= 1
            if job is not None and query.matches(job):
                jobs.append(job)
        if len(entries) < want:
            return JobPage(jobs, None)  # the index has no more
    return JobPage(jobs, encode_cursor(position))


def encode_cursor(position: Position | None) -> str | None:
    """An opaque cursor for `position`."""
    if position is None:
        return None
    raw = json.dumps([position.at.isoformat(), position.job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Position | None:
    """The position a cursor of `encode_cursor` stands for; `InvalidInputError` otherwise."""
    if cursor is None:
        return None
    try:
        if not isinstance(cursor, str):
            raise TypeError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, job_id = json.loads(raw)
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None or not isinstance(job_id, str):
            raise ValueError
        return Position(moment.astimezone(UTC), job_id)
    except (
        TypeError,
        ValueError,
        binascii.Error,
        UnicodeDecodeError,
        OverflowError,
        RecursionError,  # nested brackets: a forged cursor, never one of ours
    ):
        raise InvalidInputError(
            f"cursor {str(cursor)[:80]!r} is not a cursor of list_jobs; pass the next_cursor "
            "of the page before, or None for the first page"
        ) from None


def job_query(
    *,
    status: JobStatus | str | Iterable[JobStatus | str] | None,
    workflow: str | None,
    since: datetime | None,
    until: datetime | None,
    tags: Mapping[str, str] | None,
    limit: int,
    concurrency_key: str | None = None,
) -> JobQuery:
    """Check `list_jobs`'s arguments; `InvalidInputError` says what is wrong."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_LIMIT:
        raise InvalidInputError(
            f"limit must be a whole number from 1 to {MAX_LIMIT}, got {limit!r}"
        )
    if workflow is not None and not isinstance(workflow, str):
        raise InvalidInputError(f"workflow must be a workflow name, got {workflow!r}")
    if concurrency_key is not None and not isinstance(concurrency_key, str):
        raise InvalidInputError(
            f"concurrency_key must be a string (a key of a workflow's Concurrency), got "
            f"{concurrency_key!r}"
        )
    return JobQuery(
        statuses=_statuses(status),
        workflow=workflow,
        since=utc_moment("since", since),
        until=utc_moment("until", until),
        tags=check_tags(tags or {}, what="tags"),
        concurrency_key=concurrency_key,
    )


def _statuses(
    status: JobStatus | str | Iterable[JobStatus | str] | None,
) -> frozenset[JobStatus] | None:
    if status is None:
        return None
    given: Iterable[Any] = [status] if isinstance(status, JobStatus | str | int) else status
    found = set()
    for value in given:
        try:
            found.add(JobStatus[value] if isinstance(value, str) else JobStatus(value))
        except (KeyError, ValueError):
            names = ", ".join(member.name for member in JobStatus)
            raise InvalidInputError(f"status {value!r} is not one of {names}") from None
    return frozenset(found)


def utc_moment(name: str, value: Any) -> datetime | None:
    """`value` (a datetime or None) in UTC, a naive one read as UTC as Celery reads a naive
    eta; `InvalidInputError` naming `name` for anything else."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{name} must be a datetime or None, got {type(value).__name__}")
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise InvalidInputError(
            f"{name} {value.isoformat()} is out of range in UTC: give a time between "
            "0001-01-02 and 9999-12-30"
        ) from None


def check_tags(tags: Any, *, what: str = "tags") -> dict[str, str]:
    """`tags` as a dict of str to str within the limits; `InvalidInputError` otherwise."""
    if not isinstance(tags, Mapping):
        raise InvalidInputError(f'{what} must be a dict of str to str, e.g. {{"order": "A-17"}}')
    if len(tags) > MAX_TAGS:
        raise InvalidInputError(f"{what} holds {len(tags)} tags; at most {MAX_TAGS} are allowed")
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidInputError(
                f"{what} must map str to str; {key!r}: {value!r} is not (write numbers as text)"
            )
        if not 0 < len(key) <= MAX_TAG_KEY or not key.isprintable():
            raise InvalidInputError(
                f"tag name {key[:80]!r} must be 1 to {MAX_TAG_KEY} printable characters"
            )
        if not value.isprintable():
            where = next(i for i, c in enumerate(value) if not c.isprintable())
            raise InvalidInputError(
                f"tag {key!r} has a value with a character that is not printable "
                f"({value[where]!r} at position {where}); tag values are printable text"
            )
        if len(value) > MAX_TAG_VALUE:
            raise InvalidInputError(
                f"tag {key!r} has a value of {len(value)} characters; at most {MAX_TAG_VALUE} "
                "are allowed"
            )
    return dict(tags)
