"""`cancel_job`: a job that waits is CANCELLED at once and runs no step; a running one is
CANCELLING until its step ends; a finished one is left as it was. A job waiting for the
children of a fan-out is CANCELLING until its unfinished children, cancelled here, have ended."""

from __future__ import annotations

from ergate_celery.lifecycle.events import Cancel
from ergate_celery.model.job import Job
from ergate_celery.operations.reading import job_not_found, reading
from ergate_celery.worker import observing
from ergate_celery.worker.fan_out import cancel_children
from ergate_celery.worker.runtime import Runtime

#: The `sender` of the announcements of `cancel_job`.
CANCEL_SENDER = "ergate.cancel_job"


def cancel_job(rt: Runtime, job_id: str) -> Job:
    """Cancel a job; returns it as it is now, from the one read of the change."""
    with observing.operating(CANCEL_SENDER, job_id):
        before, after = reading(job_id, lambda: rt.apply(job_id, Cancel(), sender=CANCEL_SENDER))
    if after is not None:
        if after.fan_out is not None:
            cancel_children(rt, after, CANCEL_SENDER)
            return rt.store.get(job_id) or after
        return after
    if before is None:
        raise job_not_found(job_id)
    return before
