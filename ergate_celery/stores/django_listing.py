"""The django-db store's listing index (a `JobListing` row per submitted job and a `JobTag`
row per tag, beside django-celery-results' `TaskResult`), and the times Django stores."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from ergate_celery.model.job import Job
from ergate_celery.stores.django_flow import app_model
from ergate_celery.stores.listing import JobQuery, Position


def to_db(moment: datetime) -> datetime:
    """`moment` as Django stores it: aware under USE_TZ, naive UTC without."""
    return moment if settings.USE_TZ else moment.astimezone(UTC).replace(tzinfo=None)


def from_db(moment: datetime) -> datetime:
    """`moment` as read from Django: aware, in UTC."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def list_job(job: Job) -> None:
    """Add the listing row and the tags of `job` (none before it is submitted)."""
    if job.submitted_at is None:
        return
    job_id = str(job.id)
    app_model("JobListing").objects.create(
        job_id=job_id,
        workflow=job.workflow_name,
        status=job.status.name,
        submitted_at=to_db(job.submitted_at),
    )
    tag = app_model("JobTag")
    tag.objects.bulk_create(
        [tag(job_id=job_id, key=key, value=value) for key, value in job.tags.items()]
    )


def listed_rows(
    model: Any, query: JobQuery, after: Position | None, count: int
) -> list[tuple[Position, Any]]:
    """The next `count` listing entries after `after` for `query`, newest first, each with
    its `model` row (None once `backend_cleanup` removed it)."""
    rows = app_model("JobListing").objects.all()
    if query.statuses is not None:
        rows = rows.filter(status__in=[status.name for status in query.statuses])
    if query.workflow is not None:
        rows = rows.filter(workflow=query.workflow)
    if query.since is not None:
        rows = rows.filter(submitted_at__gte=to_db(query.since))
    if query.until is not None:
        rows = rows.filter(submitted_at__lte=to_db(query.until))
    tags = app_model("JobTag").objects
    for key, value in query.tags.items():
        rows = rows.filter(job_id__in=tags.filter(key=key, value=value).values("job_id"))
    if after is not None:
        at = to_db(after.at)
        rows = rows.filter(Q(submitted_at__lt=at) | Q(submitted_at=at, job_id__lt=after.job_id))
    entries = list(
        rows.order_by("-submitted_at", "-job_id").values_list("job_id", "submitted_at")[:count]
    )
    records = {
        row.task_id: row
        for row in model.objects.filter(task_id__in=[job_id for job_id, _ in entries])
    }
    return [(Position(from_db(at), str(job_id)), records.get(job_id)) for job_id, at in entries]


def unlist(job_ids: list[str]) -> None:
    """Remove the listing rows and tags of `job_ids`."""
    with transaction.atomic():
        app_model("JobListing").objects.filter(job_id__in=job_ids).delete()
        app_model("JobTag").objects.filter(job_id__in=job_ids).delete()
