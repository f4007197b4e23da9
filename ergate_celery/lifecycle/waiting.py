"""Waiting steps: a step raises `Sleep` or `WaitForSignal`, and its job waits SCHEDULED.

The step completes as if it had returned its `retval` (the next step's input, and the same
progress); the job is then stored SCHEDULED with `job.wait` saying what it waits for. It holds
no worker slot and no ETA message: its entry in the scheduled index is the wait's end (a
sleep's end, or a signal's timeout), so beat's release finds it with every other due job and
claims it once. A wait for a signal without a timeout is indexed at `FOREVER`: it is listed
and cancellable like any scheduled job, and a release run, which reads the index only up to
now, never reads it.

Signals are stored on the job by name (`job.signals`), whatever the job is doing: a signal
that arrives while the step that will wait for it is still running is kept, and that wait
then returns at once. The first payload of a name wins; a repeat is acknowledged and ignored,
so a webhook delivered twice releases the job once.

The transitions here are pure, called from `lifecycle.transition`; `signalling.py` holds
`signal_job`, the operation that sends a signal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ergate_celery.exceptions import InvalidInputError, Sleep, WaitForSignal
from ergate_celery.model.job import Job, JobError, Wait
from ergate_celery.model.job_status import JobStatus

S = JobStatus

#: The index time of a wait without a timeout: in the scheduled index, never due.
FOREVER = datetime(9000, 1, 1, tzinfo=UTC)


def wait_for(request: Sleep | WaitForSignal, step: str, now: datetime) -> Wait:
    """The wait a step asked for by raising `request` at `now`; `InvalidInputError` for one
    that ends past the last date a clock can show."""
    seconds = request.seconds if isinstance(request, Sleep) else request.timeout
    try:
        if isinstance(request, Sleep):
            until = request.until
            if until is None:
                assert seconds is not None
                until = now + timedelta(seconds=seconds)
            return Wait(step=step, since=now, until=until.astimezone(UTC))
        end = None if seconds is None else now + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        what = "Sleep" if isinstance(request, Sleep) else "WaitForSignal timeout"
        raise InvalidInputError(
            f"Step {step!r} asked for a {what} of {seconds!r} s, which ends past the last "
            "date a clock can show; wait for less (or WaitForSignal(timeout=None) for ever)"
        ) from None
    return Wait(step=step, since=now, until=end, signal=request.name)


def due_at(job: Job) -> datetime:
    """When a SCHEDULED job is due: the end of its wait, else its requested start time."""
    if job.wait is not None:
        return job.wait.until or FOREVER
    assert job.requested_start_time is not None, "a SCHEDULED job has a start time"
    return job.requested_start_time


def begin(after: Job, now: datetime) -> Job:
    """The job a step that raised a wait leaves: SCHEDULED, or QUEUED when the wait is
    already over (its signal came while the step ran, or the sleep has ended)."""
    wait = after.wait
    if after.status is not S.SCHEDULED or wait is None:
        return after
    if wait.signal is not None and wait.signal in after.signals:
        return _released(after)
    if wait.signal is None and wait.until is not None and wait.until <= now:
        return _released(after)
    return after


def wake(stored: Job, now: datetime) -> Job | None:
    """Beat's release of a waiting job: QUEUED when a sleep ended, FAILED when a signal's
    timeout passed, None while the wait lasts."""
    wait = stored.wait
    assert wait is not None
    if stored.status is not S.SCHEDULED or wait.until is None or wait.until > now:
        return None
    if wait.signal is None or wait.signal in stored.signals:
        return _released(stored)
    waited = (wait.until - wait.since).total_seconds()
    error = JobError(
        type="SignalTimeout",
        message=(
            f"No signal {wait.signal!r} came within {waited:g} s of step {wait.step!r} "
            f"raising WaitForSignal (timed out at {wait.until.isoformat()})"
        ),
        step=wait.step,
    )
    return stored.model_copy(update={"status": S.FAILED, "error": error})


def receive(stored: Job, name: str, payload: Any) -> Job | None:
    """The job with signal `name` received: released when it waits for it, else kept for
    a later wait. None for a finished job, or a name already received (the first wins)."""
    if stored.is_final or name in stored.signals:
        return None
    received = stored.model_copy(update={"signals": {**stored.signals, name: payload}})
    wait = stored.wait
    if stored.status is S.SCHEDULED and wait is not None and wait.signal == name:
        return _released(received)
    return received


def again(wait: Wait, now: datetime) -> Wait:
    """The wait a retried job waits anew (it stopped while waiting: a signal's timeout, or a
    cancel): a signal wait as long as before from now; a sleep until its own end."""
    if wait.signal is None or wait.until is None:
        return wait.model_copy(update={"since": now})
    return wait.model_copy(update={"since": now, "until": now + (wait.until - wait.since)})


def _released(job: Job) -> Job:
    return job.model_copy(update={"status": S.QUEUED, "wait": None})
