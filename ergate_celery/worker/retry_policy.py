"""When a step that raised is retried by Celery, and after how long: the step's options with
Celery's meaning (`autoretry_for`, `max_retries`, `retry_backoff`, ...).

The decision is taken in the step body, not by Celery's autoretry wrapper, so that a retry
stays the same step run again and gives its claim back first.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from ergate_celery.model.workflow_step import WorkflowStep


def should_retry(step: WorkflowStep[Any, Any], task: Task[Any, Any], exc: Exception) -> bool:
    retry_for = step.task_options.get("autoretry_for", ())
    max_retries = task.max_retries
    return (
        bool(retry_for)
        and isinstance(exc, tuple(retry_for))
        and (max_retries is None or task.request.retries < max_retries)
    )


def retry_delay(step: WorkflowStep[Any, Any], task: Task[Any, Any]) -> float:
    backoff = step.task_options.get("retry_backoff", False)
    if not backoff:
        delay: float = task.default_retry_delay
        return delay
    return float(
        get_exponential_backoff_interval(
            factor=int(backoff),
            retries=task.request.retries,
            maximum=step.task_options.get("retry_backoff_max", 600),
            full_jitter=step.task_options.get("retry_jitter", True),
        )
    )
