"""`retry_job` and `retry_jobs`: a FAILED, ABORTED or CANCELLED job goes back to the step it
stopped at, with the input that step had.

Each retry goes through `Runtime.apply` (a lifecycle transition inside the store's
compare-and-set), so a retry racing another retry, a cancel or the sweep ends in one state
and publishes at most once.
"""

from __future__ import annotations

from datetime import datetime

from ergate_celery.exceptions import InvalidInputError, JobNotFoundError, JobStateError
from ergate_celery.lifecycle.events import RetryRequested
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import RETRYABLE_STATUSES, JobStatus
from ergate_celery.operations.listing import StatusFilter, every_job
from ergate_celery.operations.reading import job_not_found, reading
from ergate_celery.stores.listing import JobQuery, job_query
from ergate_celery.worker import observing
from ergate_celery.worker.runtime import Runtime

#: The `sender` of the announcements of `retry_job`.
RETRY_SENDER = "ergate.retry_job"


def retry_job(rt: Runtime, job_id: str) -> Job:
    """Send a FAILED, ABORTED or CANCELLED job back to the step it stopped at; the job as
    written. `JobNotFoundError` or `JobStateError` change nothing."""
    with observing.operating(RETRY_SENDER, job_id):
        with reading(job_id):
            before, after = rt.apply(job_id, RetryRequested(), sender=RETRY_SENDER)
        if after is None:
            if before is None:
                raise job_not_found(job_id)
            raise JobStateError(
                f"Job {job_id!r} is {before.status.name}; only FAILED, ABORTED or CANCELLED "
                "jobs can be retried"
            )
        if after.status is JobStatus.QUEUED:
            rt.publish_current_step(after, RETRY_SENDER)
        return after


def retry_query(status: StatusFilter, workflow: str | None, since: datetime | None) -> JobQuery:
    """The jobs `retry_jobs` retries; a status that cannot be retried is an error."""
    query = job_query(
        status=status if status is not None else RETRYABLE_STATUSES,
        workflow=workflow,
        since=since,
        until=None,
        tags=None,
        limit=1,
    )
    assert query.statuses is not None
    wrong = sorted(s.name for s in query.statuses if s not in RETRYABLE_STATUSES)
    if wrong:
        raise InvalidInputError(
            f"status {', '.join(wrong)} cannot be retried; retry FAILED, ABORTED or CANCELLED jobs"
        )
    return query


def retry_jobs(rt: Runtime, query: JobQuery) -> int:
    """Retry every job matching `query`; how many were retried (one retried meanwhile by
    someone else is skipped)."""
    retried = 0
    for job in list(every_job(rt, query)):
        try:
            retry_job(rt, str(job.id))
        except (JobStateError, JobNotFoundError):
            continue
        retried += 1
    return retried
