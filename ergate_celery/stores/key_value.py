"""A job's record on a key-value result backend (Redis, Celery's in-memory cache): the
document Celery stores for a task result, with the job as its result."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ergate_celery.model.job import Job
from ergate_celery.stores.base import job_document


def job_meta(job: Job, now: datetime) -> dict[str, Any]:
    """Celery's task result document holding `job`: state its status name, done at `now`
    once the job is final."""
    return {
        "status": job.status.name,
        "result": job_document(job),
        "traceback": job.error.traceback if job.error else None,
        "children": [],
        "date_done": now.isoformat() if job.is_final else None,
        "task_id": str(job.id),
    }
