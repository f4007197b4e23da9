"""What can happen to a job: the events a transition is computed from.

Whoever changes a job describes what happened as one of these (a step on a worker, beat's
release, the stuck sweep, `cancel_job` in a web process, Celery's time-limit hook); each is
plain data, so the lifecycle can be tested as a table without a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ergate_celery.model.job import Job, JobError
from ergate_celery.model.job_status import JobStatus


@dataclass(frozen=True, slots=True)
class HandOver:
    """A job stored PENDING inside a transaction is handed on when it commits."""

    to: JobStatus


@dataclass(frozen=True, slots=True)
class Release:
    """Beat found the SCHEDULED job due in its index; a job of a `paused` workflow is parked
    (QUEUED without a message) rather than left in the index, where it would hold up the rest."""

    paused: frozenset[str] = frozenset()


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
    """Celery killed the step at its hard `time_limit`."""

    step_name: str
    steps_completed: int
    seconds: float


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


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """A message for the job cannot run: malformed, oversized, or its step is unknown.

    With `steps_completed`, only a job still at that point is failed: a bad copy of an old
    message must not fail a job that has moved on.
    """

    error: JobError
    steps_completed: int | None = None


@dataclass(frozen=True, slots=True)
class RetryRequested:
    """`retry_job` was asked: a FAILED, ABORTED or CANCELLED job goes back to the step it
    stopped at, with the input that step had."""


@dataclass(frozen=True, slots=True)
class Park:
    """A step message arrived while its workflow is paused: the job waits, QUEUED, with no
    message in the broker, until `resume_workflow` publishes it again."""

    step_name: str
    steps_completed: int


@dataclass(frozen=True, slots=True)
class Unpark:
    """`resume_workflow` publishes a parked job's step again."""


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
    | Park
    | Unpark
)
