"""`retry_job` and `retry_jobs`: a FAILED, ABORTED or CANCELLED job goes back to the step it
stopped at, with the input that step had.

Each retry goes through `Runtime.apply` (a lifecycle transition inside the store's
compare-and-set), so a retry racing another retry, a cancel or the sweep ends in one state
and publishes at most once.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from ergate_celery.exceptions import (
    InvalidInputError,
    JobNotFoundError,
    JobStateError,
    UnknownStepError,
)
from ergate_celery.lifecycle.events import RetryRequested
from ergate_celery.lifecycle.transitions import queued_by
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import RETRYABLE_STATUSES
from ergate_celery.operations.listing import StatusFilter, every_job
from ergate_celery.operations.queueing import queue_step, queued
from ergate_celery.operations.reading import job_not_found
from ergate_celery.stores.listing import JobQuery, job_query
from ergate_celery.worker.runtime import Runtime

#: The `sender` of the announcements of `retry_job`.
RETRY_SENDER = "ergate.retry_job"


def retry_job(rt: Runtime, job_id: str, *, publish_on_commit: bool = True) -> Job:
    """Send a FAILED, ABORTED or CANCELLED job back to the step it stopped at; the job as
    written. `JobNotFoundError` or `JobStateError` change nothing; `UnknownStepError` when
    this app no longer has that step (the job is FAILED again).

    Asked again for a job whose first retry was written but not published (its caller was
    killed in between), it returns the job and publishes its step (see `queueing`).
    Inside a Django transaction the write and the publish wait for the commit (see
    `queueing`), unless not `publish_on_commit` (a store outside it, as a tester's)."""
    retry = RetryRequested(uuid.uuid4().hex)
    return queue_step(
        rt,
        job_id,
        retry,
        RETRY_SENDER,
        lambda before, after: _retried(job_id, before, after),
        publish_on_commit=publish_on_commit,
    )


def _retried(job_id: str, before: Job | None, after: Job | None) -> tuple[Job, Job | None]:
    if after is not None:
        return after, queued(after)
    if before is None:
        raise job_not_found(job_id)
    if queued_by(before, "retry"):
        return before, queued(before)
    raise JobStateError(
        f"Job {job_id!r} is {before.status.name}; only FAILED, ABORTED or CANCELLED jobs "
        "can be retried"
    )


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
        except (JobStateError, JobNotFoundError, UnknownStepError):
            continue  # retried meanwhile by someone else, or its step is gone
        retried += 1
    return retried
