"""Day-2 operations on stored jobs: list them, retry failed ones, pause and resume a workflow.

Each change goes through `Runtime.apply` (a lifecycle transition inside the store's
compare-and-set), so a retry racing another retry, a cancel or the sweep ends in one state and
publishes at most once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime

from ergate_celery.exceptions import InvalidInputError, JobNotFoundError, JobStateError
from ergate_celery.lifecycle.events import RetryRequested, Unpark
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import RETRYABLE_STATUSES, JobStatus
from ergate_celery.stores.listing import JobPage, JobQuery, job_query
from ergate_celery.worker.pausing import PausedWorkflows
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger("ergate_celery")

RETRY_SENDER = "ergate.retry_job"
RESUME_SENDER = "ergate.resume_workflow"
_PAGE = 500

StatusFilter = JobStatus | str | Iterable[JobStatus | str] | None


def list_jobs(
    rt: Runtime,
    *,
    status: StatusFilter = None,
    workflow: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    tags: Mapping[str, str] | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> JobPage:
    """One page of jobs, newest first; see `ErgateCelery.list_jobs`."""
    query = job_query(
        status=status, workflow=workflow, since=since, until=until, tags=tags, limit=limit
    )
    return rt.store.list_jobs(query, limit, cursor)


def every_job(rt: Runtime, query: JobQuery) -> Iterator[Job]:
    """Every job matching `query`, newest first, page by page."""
    cursor = None
    while True:
        page = rt.store.list_jobs(query, _PAGE, cursor)
        yield from page.jobs
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def retry_job(rt: Runtime, job_id: str) -> Job:
    """Send a FAILED, ABORTED or CANCELLED job back to the step it stopped at; the job as
    written. `JobNotFoundError` or `JobStateError` change nothing."""
    before, after = rt.apply(job_id, RetryRequested(), sender=RETRY_SENDER)
    if after is None:
        if before is None:
            raise JobNotFoundError(f"No job with id {job_id!r} is stored (or it has expired)")
        raise JobStateError(
            f"Job {job_id!r} is {before.status.name}; only FAILED, ABORTED or CANCELLED jobs "
            "can be retried"
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


def pause_workflow(rt: Runtime, paused: PausedWorkflows, workflow_name: str) -> bool:
    """Pause `workflow_name` for every process; whether it was running before."""
    changed = rt.store.set_paused(workflow_name, True)
    paused.forget()
    logger.info("Workflow %s paused", workflow_name)
    return changed


def resume_workflow(rt: Runtime, paused: PausedWorkflows, workflow_name: str) -> int:
    """Resume `workflow_name` and publish its parked jobs; how many were published.

    Workers trust their copy of the paused set for `ergate_pause_refresh` seconds, so a
    worker may park a job just after the resume: the parked jobs are looked for again once
    that time has passed.
    """
    rt.store.set_paused(workflow_name, False)
    paused.forget()
    published = _publish_parked(rt, workflow_name)
    time.sleep(paused.refresh)
    published += _publish_parked(rt, workflow_name)
    logger.info("Workflow %s resumed; %d parked jobs published", workflow_name, published)
    return published


def _publish_parked(rt: Runtime, workflow_name: str) -> int:
    query = JobQuery(statuses=frozenset({JobStatus.QUEUED}), workflow=workflow_name)
    published = 0
    for job in list(every_job(rt, query)):
        if not job.parked:
            continue
        after = rt.apply(str(job.id), Unpark(), sender=RESUME_SENDER).after
        if after is not None:
            rt.publish_current_step(after, RESUME_SENDER)
            published += 1
    return published
