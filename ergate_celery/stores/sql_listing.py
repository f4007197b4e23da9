"""The SQLAlchemy store's listing index: a row per submitted job (its workflow, status and
submission time) and a row per tag, beside Celery's task table, which `list_jobs` pages
through newest first."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ergate_celery.model.job import Job
from ergate_celery.stores.listing import JobQuery, Position
from ergate_celery.stores.sql_tables import naive_utc


def list_job(conn: sa.Connection, listing: sa.Table, tags: sa.Table, job: Job) -> None:
    """Add the listing row and the tags of `job` (none before it is submitted)."""
    if job.submitted_at is None:
        return
    job_id = str(job.id)
    conn.execute(
        sa.insert(listing).values(
            job_id=job_id,
            workflow=job.workflow_name,
            status=job.status.name,
            submitted_at=naive_utc(job.submitted_at),
        )
    )
    if job.tags:
        conn.execute(
            sa.insert(tags),
            [{"key": k, "value": v, "job_id": job_id} for k, v in job.tags.items()],
        )


def unlist(conn: sa.Connection, listing: sa.Table, tags: sa.Table, job_ids: list[str]) -> None:
    """Remove the listing rows and tags of `job_ids`."""
    conn.execute(sa.delete(listing).where(listing.c.job_id.in_(job_ids)))
    conn.execute(sa.delete(tags).where(tags.c.job_id.in_(job_ids)))


def listing_page(
    table: sa.Table,
    listing: sa.Table,
    tags: sa.Table,
    query: JobQuery,
    after: Position | None,
    count: int,
) -> sa.Select[Any]:
    """The next `count` entries after `after` for `query`, newest first: each job's id,
    submission time and stored record (None once `backend_cleanup` removed it)."""
    column, tag = listing.c, tags.c
    select = sa.select(column.job_id, column.submitted_at, table.c.result).select_from(
        listing.outerjoin(table, table.c.task_id == column.job_id)
    )
    if query.statuses is not None:
        select = select.where(column.status.in_([s.name for s in query.statuses]))
    if query.workflow is not None:
        select = select.where(column.workflow == query.workflow)
    if query.since is not None:
        select = select.where(column.submitted_at >= naive_utc(query.since))
    if query.until is not None:
        select = select.where(column.submitted_at <= naive_utc(query.until))
    for key, value in query.tags.items():
        select = select.where(
            sa.exists().where(tag.job_id == column.job_id, tag.key == key, tag.value == value)
        )
    if after is not None:
        at = naive_utc(after.at)
        select = select.where(
            sa.or_(
                column.submitted_at < at,
                sa.and_(column.submitted_at == at, column.job_id < after.job_id),
            )
        )
    return select.order_by(column.submitted_at.desc(), column.job_id.desc()).limit(count)
