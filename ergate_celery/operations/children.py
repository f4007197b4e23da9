"""`list_jobs(parent=...)`: the children of a job's fan-outs, page by page, in input order.

Children have ids of their position (`<parent id>.<n>`), so a page reads them by id from the
parent's count of children: no index is needed, and a page costs what it reads.
"""

from __future__ import annotations

from ergate_celery.exceptions import InvalidInputError
from ergate_celery.model.job import Job
from ergate_celery.operations.reading import check_id, job_not_found
from ergate_celery.stores.listing import SCAN_FACTOR, JobPage, JobQuery
from ergate_celery.worker.fan_out import read_many
from ergate_celery.worker.runtime import Runtime


def jobs_page(
    rt: Runtime, query: JobQuery, limit: int, cursor: str | None, parent: str | None
) -> JobPage:
    """A page of `list_jobs`: the stored jobs `query` finds, or, with `parent`, that job's
    fan-out children matching it, in input order."""
    if parent is not None:
        return list_children(rt, parent, query, limit, cursor)
    return rt.store.list_jobs(query, limit, cursor)


def list_children(
    rt: Runtime, parent_id: str, query: JobQuery, limit: int, cursor: str | None
) -> JobPage:
    """The children of `parent_id` matching `query`, in input order (positions from 0, over
    every fan-out of the job); `next_cursor` reads on."""
    check_id(parent_id)
    parent = rt.store.get(parent_id)
    if parent is None:
        raise job_not_found(parent_id)
    state = parent.fan_out
    made = 0 if state is None else state.first + state.count
    position = _position(cursor)
    jobs: list[Job] = []
    end = min(made, position + limit * SCAN_FACTOR)
    while position < end and len(jobs) < limit:
        batch = range(position, min(end, position + limit - len(jobs)))
        children = read_many(rt, [f"{parent_id}.{n}" for n in batch])
        position = batch.stop
        jobs += [child for child in children if child is not None and query.matches(child)]
    return JobPage(jobs, str(position) if position < made else None)


def _position(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not isinstance(cursor, str) or not cursor.isdigit():
        raise InvalidInputError(
            f"cursor {cursor!r} is not a cursor of list_jobs(parent=...); pass the "
            "next_cursor of the page before"
        )
    return int(cursor)
