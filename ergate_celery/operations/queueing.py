"""What the operations that send a job to a step (retry, signal) share: write the change, then
publish the step's message — when the caller's Django transaction commits, if one is open.

In a transaction, a store whose writes join it (django-db) writes at once and publishes on
commit, so the worker reads the committed row; any other store commits each write at once,
so the job is only read now (a wrong call still fails here) and the change is written and
published on commit: a rolled-back view changes nothing.

A caller killed, or a reply lost, between the write and the publish leaves the job QUEUED
with the operation's mark in `queued_by`; asking the same again publishes the step again. A
duplicate message is harmless: a step's claim runs it once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ergate_celery.exceptions import ErgateError, UnknownStepError
from ergate_celery.lifecycle.events import Event
from ergate_celery.lifecycle.transitions import transition
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.operations.reading import reading
from ergate_celery.transactions import in_django_transaction, on_commit
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger("ergate_celery")

#: What an operation makes of (the job read, the job written, None if unchanged): the job it
#: returns, and the job whose step it publishes (None: none). It raises the operation's
#: errors (an unknown job, a status the operation does not apply to).
Outcome = Callable[[Job | None, Job | None], tuple[Job, Job | None]]


def queue_step(
    rt: Runtime,
    job_id: str,
    event: Event,
    sender: str,
    outcome: Outcome,
    *,
    publish_on_commit: bool = True,
) -> Job:
    """Apply `event` to the job and publish what `outcome` says, now or on commit (see the
    module); the job as `outcome` returns it."""
    if not (publish_on_commit and in_django_transaction()):
        job, step = _write(rt, job_id, event, sender, outcome)
        if step is not None:
            publish(rt, step, sender)
        return job
    if rt.store.joins_django_transaction:
        job, step = _write(rt, job_id, event, sender, outcome)
        if step is not None:
            queued = step
            on_commit(
                lambda: _logged(f"Publishing {sender}", job_id, lambda: publish(rt, queued, sender))
            )
        return job
    stored = reading(job_id, lambda: rt.store.get(job_id))
    job, _ = outcome(stored, None if stored is None else transition(stored, event, rt.clock()))

    def write_and_publish() -> None:
        step = _write(rt, job_id, event, sender, outcome)[1]
        if step is not None:
            publish(rt, step, sender)

    on_commit(lambda: _logged(sender, job_id, write_and_publish))
    return job


def queued(job: Job) -> Job | None:
    """`job` if it waits QUEUED for a message (not parked), else None."""
    return job if job.status is JobStatus.QUEUED and not job.parked else None


def publish(rt: Runtime, job: Job, sender: str) -> None:
    """Publish the job's current step; `UnknownStepError` (the job then FAILED) when this
    app's definition no longer has it."""
    failed = rt.publish_current_step(job, sender)
    if failed is not None:
        reason = failed.error.message if failed.error is not None else "it is not defined"
        raise UnknownStepError(
            f"Job {job.id!r} cannot run step {job.current_step_name!r} of workflow "
            f"{job.workflow_name!r}: {reason}. The job is {failed.status.name} "
            "(UnknownStep); deploy the step again, then retry the job"
        )


def _write(
    rt: Runtime, job_id: str, event: Event, sender: str, outcome: Outcome
) -> tuple[Job, Job | None]:
    before, after = reading(job_id, lambda: rt.apply(job_id, event, sender=sender))
    return outcome(before, after)


def _logged(what: str, job_id: str, action: Callable[[], None]) -> None:
    # After the commit nobody is left to raise to: say what was not done, and why.
    try:
        action()
    except ErgateError as exc:
        logger.warning("%s for job %s after its transaction committed: %s", what, job_id, exc)
    except Exception:
        logger.exception("%s for job %s after its transaction committed failed", what, job_id)
