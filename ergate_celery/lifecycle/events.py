"""What can happen to a job: the events a transition is computed from.

Whoever changes a job describes what happened as one of these (a step on a worker, beat's
release, the stuck sweep, `cancel_job` in a web process, Celery's time-limit hook); each is
plain data, so the lifecycle can be tested as a table without a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ergate_celery.model.job import FanOutState, Job, JobError
from ergate_celery.model.job_status import JobStatus


@dataclass(frozen=True, slots=True)
class HandOver:
    """A job stored PENDING inside a transaction is handed on when it commits (`parked`:
    its workflow was paused by then)."""

    to: JobStatus
    parked: bool = False


@dataclass(frozen=True, slots=True)
class Release:
    """Beat found the SCHEDULED job due in its index; a job of a `paused` workflow is parked
    (QUEUED without a message) rather than left in the index, where it would hold up the rest."""

    paused: frozenset[str] = frozenset()
    #: Unique to this release run: a lost reply to its write is recognised by it.
    token: str = ""

    @property
    def mark(self) -> str:
        """What the job's `queued_by` says once this release queued it."""
        return f"release {self.token}"


@dataclass(frozen=True, slots=True)
class Claim:
    """A step message asks to run its step: the claim holds the job while the step runs."""

    workflow_name: str
    step_name: str
    step_index: int
    steps_completed: int
    token: str
    lease_until: datetime
    max_attempts: int
    workflow_version: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The step run holding `token` ended; `after` is the job the step runner computed."""

    token: str
    after: Job


@dataclass(frozen=True, slots=True)
class Yield:
    """The step run holding `token` gives its claim back for a Celery `retry()`, whose
    message waits for its countdown: the sweep leaves the job alone until `lease_until`."""

    token: str
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class Renew:
    """The worker of the step run holding `token` is alive: its lease runs to `lease_until`."""

    token: str
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class ProcessLost:
    """The worker saw the pool process that ran the step die (killed, out of memory): the
    claim it held, its token starting with `holder`, holds no more."""

    holder: str


@dataclass(frozen=True, slots=True)
class ProgressReported:
    """The step run holding `token` reports `percent`; the lease is renewed with it."""

    token: str
    percent: float
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class Cancel:
    """`cancel_job` was asked."""


@dataclass(frozen=True, slots=True)
class TimeLimit:
    """Celery killed a run of the step at its hard `time_limit`: the run of the pool process
    whose claim tokens start with `holder`. A copy of the message killed while it held no
    claim (watching another run's lease) ends nothing."""

    step_name: str
    steps_completed: int
    seconds: float
    holder: str


@dataclass(frozen=True, slots=True)
class Recover:
    """The sweep found the job idle since it was `seen`; `action` is "requeue" or "fail"."""

    seen: Job
    action: str
    idle_seconds: float
    max_attempts: int
    #: `ergate_stuck_after`: the unit of the hold between two republishes of a QUEUED job
    #: (None: the idleness found).
    stuck_after: float | None = None


@dataclass(frozen=True, slots=True)
class PublishFailed:
    """The message of the job's next step could not be published."""

    steps_completed: int
    error: JobError


@dataclass(frozen=True, slots=True)
class Signalled:
    """`signal_job` sent signal `name` with `payload` (see `waiting.py`)."""

    name: str
    payload: Any
    token: str = ""

    @property
    def mark(self) -> str:
        """What the job's `queued_by` says once this signal released it."""
        return f"signal {self.name} {self.token}"


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """A message for the job cannot run: malformed, oversized, or its step is unknown.

    With `steps_completed`, only a job still at that point is failed: a bad copy of an old
    message must not fail a job that has moved on. With `task_name` (the step task the
    message was for), only a job whose current step is that task, and that no live claim
    holds, is failed: a message can harm only its own job.
    """

    error: JobError
    steps_completed: int | None = None
    task_name: str | None = None


@dataclass(frozen=True, slots=True)
class RetryRequested:
    """`retry_job` was asked: a FAILED, ABORTED or CANCELLED job goes back to the step it
    stopped at, with the input that step had."""

    token: str = ""

    @property
    def mark(self) -> str:
        """What the job's `queued_by` says once this retry sent it back."""
        return f"retry {self.token}"


@dataclass(frozen=True, slots=True)
class Published:
    """The operation that left `mark` in the job's `queued_by` has published its step: a
    repeat of it has nothing left to finish."""

    mark: str


@dataclass(frozen=True, slots=True)
class Park:
    """A step message arrived while its workflow is paused: the job waits, QUEUED, with no
    message in the broker, until `resume_workflow` publishes it again."""

    step_name: str
    steps_completed: int


@dataclass(frozen=True, slots=True)
class Unpark:
    """`resume_workflow` publishes a parked job's step again."""


@dataclass(frozen=True, slots=True)
class FanOutStarted:
    """The step run holding `token` raised `FanOut`: `state` is written on the job before
    its children are made, so that a child ending while the others are made is counted."""

    token: str
    state: FanOutState


@dataclass(frozen=True, slots=True)
class ChildEnded:
    """The child at `position` (`<parent id>.<position>`) reached a final status."""

    position: int


@dataclass(frozen=True, slots=True)
class TurnCame:
    """A child held back by its parent's `max_in_flight` may start: a sibling ended."""


@dataclass(frozen=True, slots=True)
class WaitForSlot:
    """A step message of a job whose first step would take its concurrency key past the
    limit: the job waits, QUEUED with no message, until a slot of its key is freed."""

    step_name: str
    steps_completed: int


@dataclass(frozen=True, slots=True)
class SlotGranted:
    """A job waiting for a concurrency slot was given one: its step is published again."""


@dataclass(frozen=True, slots=True)
class ParkedChecked:
    """The sweep found a parked job that still has to wait (its workflow is paused, or its
    key has no free slot): the record is written again as it is, which dates its index entry
    anew, so that the sweep looks at it again only after `ergate_stuck_after`."""


Event = (
    HandOver
    | Release
    | Claim
    | Finish
    | Yield
    | Renew
    | ProcessLost
    | ProgressReported
    | Cancel
    | TimeLimit
    | Recover
    | PublishFailed
    | MessageRejected
    | Signalled
    | RetryRequested
    | Published
    | Park
    | Unpark
    | FanOutStarted
    | ChildEnded
    | TurnCame
    | WaitForSlot
    | SlotGranted
    | ParkedChecked
)
