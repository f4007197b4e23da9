"""Module-level helpers that use the `ErgateCelery` of Celery's current app (e.g. in a view)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .binding import ErgateCelery
from .job import Job


def submit_job(
    workflow_name: str | Job,
    *,
    initial_input_value: Any = None,
    user_context: Any = None,
    requested_start_time: datetime | None = None,
    id: str | None = None,
    priority: int | None = None,
    deadline: datetime | None = None,
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
