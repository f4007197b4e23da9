"""Reading one job, for `get_job`, `wait_for_job` and the operations that change one: an id
under which no job is stored, or a record that is not a job, is a `JobNotFoundError` that
says which."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ergate_celery.exceptions import InvalidInputError, JobNotFoundError, JobTimeoutError
from ergate_celery.model.job import Job
from ergate_celery.stores.base import UNREADABLE
from ergate_celery.worker.runtime import Runtime


def job_not_found(job_id: str) -> JobNotFoundError:
    """The error for an id under which no job is stored."""
    return JobNotFoundError(f"No job with id {job_id!r} is stored (or it has expired)")


def check_id(job_id: Any) -> None:
    """Refuse a job id that is not a string."""
    if not isinstance(job_id, str):
        raise TypeError(f"A job id is a string, got {type(job_id).__name__}")


@contextmanager
def reading(job_id: Any) -> Iterator[None]:
    """Check `job_id`, and turn reading a record that is not a job into `JobNotFoundError`."""
    check_id(job_id)
    try:
        yield
    except InvalidInputError:
        raise  # a write refused (too large): about the job, not its record
    except UNREADABLE:
        raise JobNotFoundError(
            f"{job_id!r} holds a Celery task result that is not a job (a plain task's result, "
            "or one a job id collided with); no job with that id is stored"
        ) from None


def get_job(rt: Runtime, job_id: str) -> Job:
    """The stored job, or `JobNotFoundError`."""
    with reading(job_id):
        job = rt.store.get(job_id)
    if job is None:
        raise job_not_found(job_id)
    return job


def wait_for_job(rt: Runtime, job_id: str, timeout: float | None) -> Job:
    """The job once final; `JobTimeoutError` (a `TimeoutError`) after `timeout` s,
    `JobNotFoundError` if gone."""
    with reading(job_id):
        job = rt.store.wait_final(job_id, timeout, rt.settings.wait_poll_interval)
    if job is None:
        raise job_not_found(job_id)
    if not job.is_final:
        raise JobTimeoutError(f"Job {job_id!r} is still {job.status.name} after {timeout} s")
    return job
