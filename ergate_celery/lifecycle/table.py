"""The job lifecycle as a table: one row per (status, event, condition) and the status it
leads to. `tests/test_lifecycle.py` checks every row against `lifecycle.transition`, and
`mermaid()` prints the README's state diagram from it, so neither can drift.
"""

from __future__ import annotations

from typing import NamedTuple, get_args

from ergate_celery.lifecycle.events import Event
from ergate_celery.model.job_status import JobStatus

S = JobStatus


class Row(NamedTuple):
    """One line of the lifecycle: from `status`, `event` (when `when`) leads to `to`."""

    status: JobStatus
    event: str
    when: str
    to: JobStatus | None


#: The name of every lifecycle event, as the rows name them.
_EVENTS = tuple(event.__name__ for event in get_args(Event))


def _rows() -> list[Row]:
    rows = [
        Row(S.PENDING, "HandOver", "the transaction committed, start now", S.QUEUED),
        Row(S.PENDING, "HandOver", "the transaction committed, start later", S.SCHEDULED),
        Row(S.SCHEDULED, "Release", "due", S.QUEUED),
        Row(S.SCHEDULED, "Release", "past its deadline", S.FAILED),
        Row(S.SCHEDULED, "Release", "not due yet", None),
        Row(S.SCHEDULED, "Release", "a Sleep ended", S.QUEUED),
        Row(S.SCHEDULED, "Release", "a WaitForSignal timed out", S.FAILED),
        Row(S.SCHEDULED, "Release", "waiting, not due yet", None),
        Row(S.SCHEDULED, "Release", "due, its workflow paused: parked", S.QUEUED),
        Row(S.QUEUED, "Claim", "the message's step", S.RUNNING),
        Row(S.QUEUED, "Claim", "first step, past its deadline", S.FAILED),
        Row(S.QUEUED, "Claim", "a stale message", None),
        Row(S.RUNNING, "Claim", "a duplicate while the lease holds", None),
        Row(S.RUNNING, "Claim", "a redelivery or an expired lease", S.RUNNING),
        Row(S.RUNNING, "Claim", "worker lost max_step_attempts times", S.FAILED),
        Row(S.CANCELLING, "Claim", "the message's step", S.CANCELLED),
        Row(S.RUNNING, "Finish", "returned, more steps", S.QUEUED),
        Row(S.RUNNING, "Finish", "last step returned, or GoToEnd", S.COMPLETED),
        Row(S.RUNNING, "Finish", "raised", S.FAILED),
        Row(S.RUNNING, "Finish", "AbortJob", S.ABORTED),
        Row(S.RUNNING, "Finish", "another run holds the claim", None),
        Row(S.RUNNING, "Finish", "Sleep or WaitForSignal", S.SCHEDULED),
        Row(S.RUNNING, "Finish", "WaitForSignal, the signal already came", S.QUEUED),
        Row(S.CANCELLING, "Finish", "Sleep or WaitForSignal", S.CANCELLED),
        Row(S.CANCELLING, "Finish", "more steps", S.CANCELLED),
        Row(S.CANCELLING, "Finish", "last step returned", S.COMPLETED),
        Row(S.RUNNING, "Yield", "Celery retry()", S.RUNNING),
        Row(S.RUNNING, "ProgressReported", "higher percent", S.RUNNING),
        Row(S.CANCELLING, "ProgressReported", "higher percent", S.CANCELLING),
        Row(S.PENDING, "Cancel", "", S.CANCELLED),
        Row(S.SCHEDULED, "Cancel", "", S.CANCELLED),
        Row(S.QUEUED, "Cancel", "", S.CANCELLED),
        Row(S.RUNNING, "Cancel", "", S.CANCELLING),
        Row(S.RUNNING, "TimeLimit", "hard time_limit", S.FAILED),
        Row(S.CANCELLING, "TimeLimit", "hard time_limit", S.FAILED),
        Row(S.QUEUED, "Recover", "stuck, requeue", S.QUEUED),
        Row(S.RUNNING, "Recover", "stuck, requeue", S.QUEUED),
        Row(S.RUNNING, "Recover", "stuck, requeued max_step_attempts times", S.FAILED),
        Row(S.RUNNING, "Recover", "stuck, ergate_stuck_action = fail", S.FAILED),
        Row(S.CANCELLING, "Recover", "stuck", S.CANCELLED),
        Row(S.PENDING, "Recover", "committed, never handed over (django-db)", S.QUEUED),
        Row(S.PENDING, "Recover", "the same, start later", S.SCHEDULED),
        Row(S.QUEUED, "PublishFailed", "", S.FAILED),
        Row(S.QUEUED, "MessageRejected", "malformed, oversized or unknown step", S.FAILED),
        Row(S.RUNNING, "MessageRejected", "malformed, oversized or unknown step", S.FAILED),
        Row(S.CANCELLING, "MessageRejected", "malformed, oversized or unknown step", S.FAILED),
        Row(S.PENDING, "MessageRejected", "malformed, oversized or unknown step", S.FAILED),
        Row(S.SCHEDULED, "Signalled", "the signal it waits for", S.QUEUED),
        Row(S.SCHEDULED, "Signalled", "not waiting for it: kept", S.SCHEDULED),
        Row(S.SCHEDULED, "Signalled", "already received", None),
        Row(S.PENDING, "Signalled", "kept for a later wait", S.PENDING),
        Row(S.QUEUED, "Signalled", "kept for a later wait", S.QUEUED),
        Row(S.RUNNING, "Signalled", "kept for a later wait", S.RUNNING),
        Row(S.CANCELLING, "Signalled", "kept for a later wait", S.CANCELLING),
        Row(S.FAILED, "RetryRequested", "back to the step it stopped at", S.QUEUED),
        Row(S.ABORTED, "RetryRequested", "back to the step it stopped at", S.QUEUED),
        Row(S.CANCELLED, "RetryRequested", "back to the step it stopped at", S.QUEUED),
        Row(S.CANCELLED, "RetryRequested", "cancelled before its start time", S.SCHEDULED),
        Row(S.FAILED, "RetryRequested", "a signal wait timed out: it waits again", S.SCHEDULED),
        Row(S.QUEUED, "Park", "the message's step, its workflow paused", S.QUEUED),
        Row(S.QUEUED, "Park", "already parked, or a stale message", None),
        Row(S.QUEUED, "Unpark", "parked", S.QUEUED),
        Row(S.QUEUED, "Unpark", "not parked", None),
    ]
    listed = {(row.status, row.event) for row in rows}
    # Every other (status, event) pair leaves the job as it is: final jobs change only by
    # RetryRequested.
    rows += [
        Row(status, event, "", None)
        for status in S
        for event in _EVENTS
        if (status, event) not in listed
    ]
    return rows


#: The whole lifecycle, one row per (status, event, condition); tested against `transition`.
LIFECYCLE: tuple[Row, ...] = tuple(_rows())


def mermaid() -> str:
    """The state diagram of `LIFECYCLE` in Mermaid, as the README shows it."""
    edges: dict[tuple[JobStatus, JobStatus], list[str]] = {}
    for row in LIFECYCLE:
        quiet = ("ProgressReported", "Yield", "Signalled")  # the status stays: not an edge
        if row.to is None or (row.to is row.status and row.event in quiet):
            continue
        edges.setdefault((row.status, row.to), [])
        if row.event not in edges[(row.status, row.to)]:
            edges[(row.status, row.to)].append(row.event)
    lines = ["stateDiagram-v2", "    [*] --> PENDING: submit in a transaction"]
    lines += ["    [*] --> SCHEDULED: submit, future start", "    [*] --> QUEUED: submit"]
    for (source, target), events in edges.items():
        lines.append(f"    {source.name} --> {target.name}: {', '.join(events)}")
    lines += [f"    {status.name} --> [*]" for status in S if status.is_final]
    return "\n".join(lines) + "\n"
