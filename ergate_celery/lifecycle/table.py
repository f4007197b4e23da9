"""The job lifecycle as a table: one row per (status, event, condition) and the status it
leads to. `tests/unit/test_lifecycle.py` checks every row against `lifecycle.transition`, and
`mermaid()` prints the docs' state diagram from it, so neither can drift.
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


#: The changes, one a line: from status, event, to status ("-": the job is left as it is),
#: and the condition. Every (status, event) pair not listed leaves the job as it is: final
#: jobs change only by RetryRequested.
_TABLE = """
PENDING     HandOver          QUEUED      the transaction committed, start now
PENDING     HandOver          SCHEDULED   the transaction committed, start later
SCHEDULED   Release           QUEUED      due
SCHEDULED   Release           FAILED      past its deadline
SCHEDULED   Release           -           not due yet
SCHEDULED   Release           QUEUED      a Sleep ended
SCHEDULED   Release           FAILED      a WaitForSignal timed out
SCHEDULED   Release           -           waiting, not due yet
SCHEDULED   Release           QUEUED      due, its workflow paused: parked
QUEUED      Claim             RUNNING     the message's step
QUEUED      Claim             FAILED      first step, past its deadline
QUEUED      Claim             -           a stale message
RUNNING     Claim             -           a duplicate while the lease holds
RUNNING     Claim             -           a redelivered copy while the lease holds
RUNNING     Claim             RUNNING     an expired lease
RUNNING     Claim             FAILED      worker lost max_step_attempts times
CANCELLING  Claim             CANCELLED   the message's step
RUNNING     Finish            QUEUED      returned, more steps
RUNNING     Finish            COMPLETED   last step returned, or GoToEnd
RUNNING     Finish            FAILED      raised
RUNNING     Finish            ABORTED     AbortJob
RUNNING     Finish            -           another run holds the claim
RUNNING     Finish            SCHEDULED   Sleep or WaitForSignal
RUNNING     Finish            QUEUED      WaitForSignal, the signal already came
RUNNING     Finish            CANCELLED   JobCancelled
CANCELLING  Finish            CANCELLED   Sleep or WaitForSignal
CANCELLING  Finish            CANCELLED   more steps
CANCELLING  Finish            COMPLETED   last step returned
CANCELLING  Finish            CANCELLED   JobCancelled: the step stopped at a report
RUNNING     Yield             RUNNING     Celery retry()
RUNNING     Renew             RUNNING     its worker is alive
CANCELLING  Renew             CANCELLING  its worker is alive
RUNNING     ProcessLost       RUNNING     its pool process died: the lease ends
CANCELLING  ProcessLost       CANCELLING  its pool process died: the lease ends
RUNNING     ProcessLost       -           another process holds the claim
RUNNING     ProgressReported  RUNNING     higher percent
CANCELLING  ProgressReported  CANCELLING  higher percent
PENDING     Cancel            CANCELLED
SCHEDULED   Cancel            CANCELLED
QUEUED      Cancel            CANCELLED
RUNNING     Cancel            CANCELLING
RUNNING     TimeLimit         FAILED      hard time_limit
CANCELLING  TimeLimit         FAILED      hard time_limit
RUNNING     TimeLimit         -           another process holds the claim
QUEUED      Recover           QUEUED      stuck, republish
QUEUED      Recover           FAILED      stuck, ergate_stuck_action = fail
RUNNING     Recover           QUEUED      lease expired, requeue
RUNNING     Recover           QUEUED      a retry's countdown and lease passed, republish
RUNNING     Recover           FAILED      lease expired, requeued max_step_attempts times
RUNNING     Recover           FAILED      lease expired, ergate_stuck_action = fail
RUNNING     Recover           -           its worker renews the lease
CANCELLING  Recover           CANCELLED   lease expired
CANCELLING  Recover           -           its worker renews the lease
PENDING     Recover           QUEUED      committed, never handed over (django-db)
PENDING     Recover           SCHEDULED   the same, start later
QUEUED      PublishFailed     FAILED
QUEUED      MessageRejected   FAILED      malformed, oversized or unknown step
RUNNING     MessageRejected   FAILED      malformed, oversized or unknown step
CANCELLING  MessageRejected   FAILED      malformed, oversized or unknown step
PENDING     MessageRejected   FAILED      malformed, oversized or unknown step
SCHEDULED   Signalled         QUEUED      the signal it waits for
SCHEDULED   Signalled         SCHEDULED   not waiting for it: kept
SCHEDULED   Signalled         -           already received
PENDING     Signalled         PENDING     kept for a later wait
QUEUED      Signalled         QUEUED      kept for a later wait
RUNNING     Signalled         RUNNING     kept for a later wait
CANCELLING  Signalled         CANCELLING  kept for a later wait
FAILED      RetryRequested    QUEUED      back to the step it stopped at
ABORTED     RetryRequested    QUEUED      back to the step it stopped at
CANCELLED   RetryRequested    QUEUED      back to the step it stopped at
CANCELLED   RetryRequested    SCHEDULED   cancelled before its start time
FAILED      RetryRequested    SCHEDULED   a signal wait timed out: it waits again
QUEUED      Published         QUEUED      the operation that queued it published its step
QUEUED      Published         -           queued by another, or claimed since
QUEUED      Park              QUEUED      the message's step, its workflow paused
QUEUED      Park              -           already parked, or a stale message
QUEUED      Unpark            QUEUED      parked
QUEUED      Unpark            -           not parked, or waiting for a concurrency slot
RUNNING     FanOutStarted     RUNNING     the run holding the claim
CANCELLING  FanOutStarted     CANCELLING  the run holding the claim
RUNNING     Finish            SCHEDULED   FanOut: waits for its children
RUNNING     Finish            QUEUED      FanOut: its children all ended already
CANCELLING  Finish            CANCELLING  FanOut: its children are cancelled
SCHEDULED   Release           SCHEDULED   waiting for children: counted again
SCHEDULED   Cancel            CANCELLING  waiting for children: they are cancelled
RUNNING     ChildEnded        RUNNING     a child ended while the others are made
SCHEDULED   ChildEnded        SCHEDULED   a child ended, others unfinished
SCHEDULED   ChildEnded        QUEUED      the last child ended
SCHEDULED   ChildEnded        -           counted already
CANCELLING  ChildEnded        CANCELLED   the last child ended
SCHEDULED   TurnCame          QUEUED      a child held back by max_in_flight
CANCELLED   RetryRequested    QUEUED      cancelled waiting for children, all ended
QUEUED      WaitForSlot       QUEUED      the message's step, its key at the limit: parked
QUEUED      WaitForSlot       -           already parked, or a stale message
QUEUED      SlotGranted       QUEUED      waiting for a slot
QUEUED      SlotGranted       -           not waiting for a slot
QUEUED      ParkedChecked     QUEUED      parked, still to wait
QUEUED      ParkedChecked     -           not parked
"""


def _rows() -> list[Row]:
    rows = []
    for line in _TABLE.strip().splitlines():
        status, event, to, *when = line.split(maxsplit=3)
        rows.append(
            Row(JobStatus[status], event, "".join(when), None if to == "-" else JobStatus[to])
        )
    listed = {(row.status, row.event) for row in rows}
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
    """The state diagram of `LIFECYCLE` in Mermaid, as the docs' concepts page shows it."""
    edges: dict[tuple[JobStatus, JobStatus], list[str]] = {}
    for row in LIFECYCLE:
        quiet = (
            "ProgressReported",
            "Renew",
            "ProcessLost",
            "Yield",
            "Signalled",
            "FanOutStarted",
            "ChildEnded",
            "Release",
            "ParkedChecked",
            "Published",
        )  # the status stays: not an edge
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
