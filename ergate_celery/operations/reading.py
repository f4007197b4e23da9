"""Reading one job, for `get_job`, `wait_for_job` and the operations that change one: an id
under which no job is stored, or a record that is not a job, is a `JobNotFoundError` that
says which."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ergate_celery.exceptions import InvalidInputError, JobNotFoundError, JobTimeoutError
from ergate_celery.model.job import Job
from ergate_celery.stores.base import UNREADABLE
from ergate_celery.worker.runtime import Runtime
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

T = TypeVar("T")


def job_not_found(job_id: str) -> JobNotFoundError:
    """The error for an id under which no job is stored."""
    return JobNotFoundError(f"No job with id {job_id!r} is stored (or it has expired)")


def check_id(job_id: Any) -> None:
    """Refuse a job id that is not a string."""
    if not isinstance(job_id, str):
        raise TypeError(f"A job id is a string, got {type(job_id).__name__}")


def reading(job_id: Any, action: Callable[[], T]) -> T:
    """Check `job_id`, run `action` (which reads or changes the job), and turn reading a
    record that is not a job into `JobNotFoundError` — which carries nothing of that record,
    not even chained: its values are not the caller's to see."""
    check_id(job_id)
    if job_id.startswith(STEP_TASK_ID_PREFIX):
        raise JobNotFoundError(
            f"No job with id {job_id[:120]!r} is stored: that is the id of a step task's "
            f"result; the job's id is what follows {STEP_TASK_ID_PREFIX!r}, up to the last ':'"
        )
    try:
        return action()
    except InvalidInputError:
        raise  # a write refused (too large): about the job, not its record
    except UNREADABLE:
        pass
    # Raised here, after the handler, so that the reading error is not chained to it.
    raise JobNotFoundError(
        f"No job with id {job_id[:120]!r} is stored: that id holds a Celery task result that "
        "is not a job (a plain task's result, or one a job id collided with)"
    )


def get_job(rt: Runtime, job_id: str) -> Job:
    """The stored job, or `JobNotFoundError`."""
    job = reading(job_id, lambda: rt.store.get(job_id))
    if job is None:
        raise job_not_found(job_id)
    return job


def wait_for_job(rt: Runtime, job_id: str, timeout: float | None) -> Job:
    """The job once final; `JobTimeoutError` (a `TimeoutError`) after `timeout` s,
    `JobNotFoundError` if gone."""
    poll = rt.settings.wait_poll_interval
    job = reading(job_id, lambda: rt.store.wait_final(job_id, timeout, poll))
    if job is None:
        raise job_not_found(job_id)
    if not job.is_final:
        raise JobTimeoutError(f"Job {job_id!r} is still {job.status.name} after {timeout} s")
    return job
