"""Module-level helpers that use the `ErgateCelery` of Celery's current app (e.g. in a view)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ergate_celery.binding import ErgateCelery
from ergate_celery.model.job import Job
from ergate_celery.operations.jobs import StatusFilter
from ergate_celery.stores.listing import JobPage


def submit_job(
    workflow_name: str | Job,
    *,
    initial_input_value: Any = None,
    user_context: Any = None,
    requested_start_time: datetime | None = None,
    id: str | None = None,
    priority: int | None = None,
    deadline: datetime | None = None,
    tags: dict[str, str] | None = None,
) -> Job:
    """`ErgateCelery.submit_job` on the current Celery app."""
    return ErgateCelery.of().submit_job(
        workflow_name,
        initial_input_value=initial_input_value,
        user_context=user_context,
        requested_start_time=requested_start_time,
        id=id,
        priority=priority,
        deadline=deadline,
        tags=tags,
    )


def get_job(job_id: str) -> Job:
    """`ErgateCelery.get_job` on the current Celery app."""
    return ErgateCelery.of().get_job(job_id)


def cancel_job(job_id: str) -> Job:
    """`ErgateCelery.cancel_job` on the current Celery app."""
    return ErgateCelery.of().cancel_job(job_id)


def wait_for_job(job_id: str, timeout: float | None = None) -> Job:
    """`ErgateCelery.wait_for_job` on the current Celery app."""
    return ErgateCelery.of().wait_for_job(job_id, timeout)


def signal_job(job_id: str, name: str, payload: Any = None) -> Job:
    """`ErgateCelery.signal_job` on the current Celery app."""
    return ErgateCelery.of().signal_job(job_id, name, payload)


def list_jobs(
    *,
    status: StatusFilter = None,
    workflow: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    tags: dict[str, str] | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> JobPage:
    """`ErgateCelery.list_jobs` on the current Celery app."""
    return ErgateCelery.of().list_jobs(
        status=status,
        workflow=workflow,
        since=since,
        until=until,
        tags=tags,
        limit=limit,
        cursor=cursor,
    )


def retry_job(job_id: str) -> Job:
    """`ErgateCelery.retry_job` on the current Celery app."""
    return ErgateCelery.of().retry_job(job_id)


def retry_jobs(
    *, status: StatusFilter = None, workflow: str | None = None, since: datetime | None = None
) -> int:
    """`ErgateCelery.retry_jobs` on the current Celery app."""
    return ErgateCelery.of().retry_jobs(status=status, workflow=workflow, since=since)


def pause_workflow(workflow_name: str) -> bool:
    """`ErgateCelery.pause_workflow` on the current Celery app."""
    return ErgateCelery.of().pause_workflow(workflow_name)


def resume_workflow(workflow_name: str) -> int:
    """`ErgateCelery.resume_workflow` on the current Celery app."""
    return ErgateCelery.of().resume_workflow(workflow_name)


def paused_workflows() -> set[str]:
    """`ErgateCelery.paused_workflows` on the current Celery app."""
    return ErgateCelery.of().paused_workflows()
