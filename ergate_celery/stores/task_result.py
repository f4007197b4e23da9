"""A step task's own result (its summary), stored by the job store with the job's change."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import states

from ergate_celery.model.job import Job


@dataclass(frozen=True)
class TaskResult:
    """A step task's own result (its summary), stored when, and only when, the job change is.

    Step tasks run with `ignore_result=True`; the store writes this result instead, in the same
    round trip as the job's change where the backend allows it (Redis), right after otherwise.
    """

    task_id: str
    #: The summary of the job as written.
    summarize: Callable[[Job], dict[str, Any]]
    #: The Celery request of the task (for `result_extended` fields), or None.
    request: Any = None

    def store_after(self, backend: Any, job: Job) -> None:
        """Store the summary of `job` through the backend, after the job was written."""
        self.store(backend, self.summarize(job))

    def store(self, backend: Any, summary: dict[str, Any]) -> None:
        """Store `summary` through the backend, as Celery would when the task returns."""
        backend.store_result(self.task_id, summary, states.SUCCESS, request=self.request)
