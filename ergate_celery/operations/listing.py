"""Listing stored jobs for the operations that act on many: every job a query matches, page
by page (one page is `ErgateCelery.list_jobs`, read straight from the store)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.stores.listing import JobQuery
from ergate_celery.worker.runtime import Runtime

#: What `status=` of `list_jobs` and `retry_jobs` takes: one status, several, or None (any).
StatusFilter = JobStatus | str | Iterable[JobStatus | str] | None

_PAGE = 500


def every_job(rt: Runtime, query: JobQuery) -> Iterator[Job]:
    """Every job matching `query`, newest first, page by page."""
    cursor = None
    while True:
        page = rt.store.list_jobs(query, _PAGE, cursor)
        yield from page.jobs
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
