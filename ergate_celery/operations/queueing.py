"""What the operations that send a job to a step (retry, signal) share: write the change, then
publish the step's message — when the caller's Django transaction commits, if one is open.

In a transaction, a store whose writes join it (django-db) writes at once and publishes on
commit, so the worker reads the committed row; any other store commits each write at once,
so the job is only read now (a wrong call still fails here) and the change is written and
published on commit: a rolled-back view changes nothing.

The write leaves the operation's mark in the job's `queued_by`, and the publish is followed
by a write that clears it (`Published`). A reply lost to the write is recognised, in the same
call, by the mark's token. A caller killed between the write and the publish leaves the mark:
asking the same again waits `FIRST_CALLER_GRACE` for a first caller that may still be alive
(a racing call), then publishes the step itself; if nobody asks, beat's next release after
that grace does (a marked job is indexed with the scheduled ones, see `awaits_publish`). A
duplicate message would be harmless (a step's claim runs it once); this keeps them rare.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from ergate_celery.exceptions import ErgateError, UnknownStepError
from ergate_celery.lifecycle.events import Published, Release, RetryRequested, Signalled
from ergate_celery.lifecycle.publishing import PUBLISH_GRACE
from ergate_celery.lifecycle.transitions import queued_by, transition
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.operations.reading import reading
from ergate_celery.stores.base import UNREADABLE, Updated
from ergate_celery.transactions import in_django_transaction, on_commit
from ergate_celery.worker import observing
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)

#: What an operation makes of (the job read, the job written, None if unchanged): the job it
#: returns, and the job whose step it publishes (None: none). It raises the operation's
#: errors (an unknown job, a status the operation does not apply to).
Outcome = Callable[[Job | None, Job | None], tuple[Job, Job | None]]
#: The events whose operations mark the job they queue.
Marking = Release | RetryRequested | Signalled

#: Seconds a repeat waits for a first caller, maybe alive, to publish (its publish retries
#: while the broker blinks) before publishing the step itself; beat's release publishes it
#: after as long (`awaits_publish`) if nobody asks again.
FIRST_CALLER_GRACE = PUBLISH_GRACE


def queue_step(
    rt: Runtime,
    job_id: str,
    event: Marking,
    sender: str,
    outcome: Outcome,
    *,
    publish_on_commit: bool = True,
) -> Job:
    """Apply `event` to the job and publish what `outcome` says, now or on commit (see the
    module); the job as `outcome` returns it."""
    if not (publish_on_commit and in_django_transaction()):
        with observing.operating(sender, job_id):
            job, step = _write(rt, job_id, event, sender, outcome)
            if step is not None:
                publish(rt, step, sender)
        return job
    if rt.store.joins_django_transaction:
        with observing.operating(sender, job_id):
            job, step = _write(rt, job_id, event, sender, outcome)
        if step is not None:
            queued = step
            on_commit(
                lambda: logged_after_commit(
                    f"Publishing {sender}", job_id, lambda: publish(rt, queued, sender)
                )
            )
        return job
    stored = reading(job_id, lambda: rt.store.get(job_id))
    job, _ = outcome(stored, None if stored is None else transition(stored, event, rt.clock()))

    def write_and_publish() -> None:
        with observing.operating(sender, job_id):
            step = _write(rt, job_id, event, sender, outcome)[1]
            if step is not None:
                publish(rt, step, sender)

    on_commit(lambda: logged_after_commit(sender, job_id, write_and_publish))
    return job


def queued(job: Job) -> Job | None:
    """`job` if it waits QUEUED for a message (not parked), else None."""
    return job if job.status is JobStatus.QUEUED and not job.parked else None


def publish(rt: Runtime, job: Job, sender: str) -> None:
    """Publish the job's current step, then clear the mark of the operation that queued it;
    `UnknownStepError` (the job then FAILED) when this app's definition no longer has it."""
    failed = rt.publish_current_step(job, sender)
    if failed is not None:
        reason = failed.error.message if failed.error is not None else "it is not defined"
        raise UnknownStepError(
            f"Job {job.id!r} cannot run step {job.current_step_name!r} of workflow "
            f"{job.workflow_name!r}: {reason}. The job is {failed.status.name} "
            "(UnknownStep); deploy the step again, then retry the job"
        )
    note_published(rt, job, sender)


def note_published(rt: Runtime, job: Job, sender: str) -> None:
    """Clear the mark of the operation that queued the job, once its step is published."""
    if job.queued_by is not None:
        try:
            rt.apply(str(job.id), Published(job.queued_by), sender=sender)
        except Exception as exc:
            # Published all the same: a repeat would only send a harmless duplicate.
            logger.warning("Could not note the publish of job %s (%r)", job.id, exc)


def _write(
    rt: Runtime, job_id: str, event: Marking, sender: str, outcome: Outcome
) -> tuple[Job, Job | None]:
    before, after = reading(job_id, lambda: apply_marked(rt, job_id, event, sender))
    kind = event.mark.rsplit(" ", 1)[0]
    if after is None and before is not None and queued_by(before, kind):
        before = _after_first_caller(rt, job_id, before)
    return outcome(before, after)


def apply_marked(
    rt: Runtime, job_id: str, event: Marking, sender: str, now: datetime | None = None
) -> Updated:
    """`rt.apply(event)`, asked once more when it fails: the write may have gone through with
    its reply lost, and the event's token in the record then tells its own write (see
    `Runtime.apply`), so that the caller goes on to publish."""
    try:
        return rt.apply(job_id, event, sender=sender, now=now)
    except (*UNREADABLE, ErgateError):
        raise
    except Exception as exc:
        logger.warning("Writing job %s failed (%r); trying once more", job_id, exc)
        return rt.apply(job_id, event, sender=sender, now=now)


def _after_first_caller(rt: Runtime, job_id: str, seen: Job) -> Job | None:
    """The job once the caller that left `seen`'s mark published (and cleared it), or as it
    is after `FIRST_CALLER_GRACE` seconds (that caller is gone: its mark stays)."""
    deadline = time.monotonic() + FIRST_CALLER_GRACE
    job: Job | None = seen
    while job is not None and job.queued_by == seen.queued_by:
        if time.monotonic() >= deadline:
            return job
        time.sleep(rt.settings.wait_poll_interval)
        job = rt.store.get(job_id)
    return job


def logged_after_commit(what: str, job_id: str, action: Callable[[], object]) -> None:
    """Run `action` in an `on_commit` hook: its error is logged (nobody is left to raise it
    to), saying what was not done, and why."""
    try:
        action()
    except ErgateError as exc:
        logger.warning("%s for job %s after its transaction committed: %s", what, job_id, exc)
    except Exception:
        logger.exception("%s for job %s after its transaction committed failed", what, job_id)
