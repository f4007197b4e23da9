"""A job an operation queued, until its step is published.

Beat's release, a retry and a signal write the job QUEUED with their mark (`queued_by`), then
publish its step, then clear the mark (`Published`). Their caller may die between the write
and the publish: the job then waits, QUEUED, for a message nobody sent. Until the mark is
cleared the job is indexed with the scheduled jobs at the end of a grace (`lease_until`, with
no claim), so beat's next release after it publishes the step: a caller that is still alive
(its publish retrying while the broker blinks) has the grace to do it first.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ergate_celery.lifecycle import events
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus

#: Seconds an operation that queued a job has to publish its step before another publishes
#: it for it.
PUBLISH_GRACE = 5.0


def marked(
    event: events.Release | events.Signalled | events.RetryRequested, now: datetime
) -> dict[str, object]:
    """What a job queued by `event` holds until its step is published: the event's mark, and
    the end of its caller's grace."""
    return {"queued_by": event.mark, "lease_until": now + timedelta(seconds=PUBLISH_GRACE)}


def awaits_publish(job: Job) -> bool:
    """Whether an operation queued the job and its publish is not known to be done."""
    return (
        job.status is JobStatus.QUEUED
        and not job.parked
        and job.queued_by is not None
        and job.claim is None
    )
