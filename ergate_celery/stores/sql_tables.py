"""The SQLAlchemy store's own tables beside Celery's `celery_taskmeta`, and the naive UTC
times they hold."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa


def naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def job_tables(schema: str | None) -> tuple[sa.Table, sa.Table, sa.Table, sa.Table]:
    """The store's own tables beside Celery's, on one `MetaData` in `schema`: the job index
    (scheduled jobs by due time, active ones by their last change), the listing index (every
    job by submitted_at, with its status and workflow), the tags of each job, and the paused
    workflows."""
    metadata = sa.MetaData(schema=schema)
    # As long as Celery's task_id: a job's id is its record's task id.
    job_id = sa.String(155)
    index = sa.Table(
        "ergate_job_index",
        metadata,
        sa.Column("job_id", job_id, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    sa.Index("ergate_job_index_kind_at", index.c.kind, index.c.at)
    listing = sa.Table(
        "ergate_job_list",
        metadata,
        sa.Column("job_id", job_id, primary_key=True),
        sa.Column("workflow", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("submitted_at", sa.DateTime, nullable=False),
    )
    sa.Index("ergate_job_list_at", listing.c.submitted_at, listing.c.job_id)
    sa.Index("ergate_job_list_status_at", listing.c.status, listing.c.submitted_at)
    sa.Index("ergate_job_list_workflow_at", listing.c.workflow, listing.c.submitted_at)
    tags = sa.Table(
        "ergate_job_tag",
        metadata,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(200), primary_key=True),
        sa.Column("job_id", job_id, primary_key=True),
    )
    sa.Index("ergate_job_tag_job", tags.c.job_id)
    paused = sa.Table(
        "ergate_paused_workflow",
        metadata,
        sa.Column("workflow", sa.String(255), primary_key=True),
    )
    return index, listing, tags, paused
