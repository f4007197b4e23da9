"""The job store interface: where a job's record lives, inside the Celery result backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..exceptions import InvalidInputError
from ..job import Job

#: Computes the job to write from the job stored now, or None to leave the record alone.
#: It may be called more than once when a concurrent write wins a race, so it must be pure.
Change = Callable[[Job], Job | None]


class JobStore(Protocol):
    """Reads and atomically changes job records; one implementation per result backend."""

    def create(self, job: Job) -> None:
        """Store a new job; `DuplicateJobError` if its id is taken (that record is untouched)."""

    def get(self, job_id: str) -> Job | None:
        """The stored job, or None."""

    def update(self, job_id: str, change: Change) -> Job | None:
        """Apply `change` atomically (compare-and-set); the job written, or None."""

    def delete(self, job_id: str) -> None:
        """Remove a job record (used to undo a submission whose publish failed)."""


def job_document(job: Job) -> dict[str, Any]:
    """The job as the JSON document stored as the Celery result."""
    return job.model_dump(mode="json")


def job_from_document(document: Any) -> Job:
    """Rebuild a job from its stored document."""
    return Job.model_validate(document)


def check_size(job: Job, encoded: bytes | str, max_bytes: int) -> None:
    """Refuse a record larger than `ergate_max_payload_bytes`."""
    size = len(encoded)
    if size > max_bytes:
        raise InvalidInputError(
            f"Job {job.id!r} would take {size} bytes, over ergate_max_payload_bytes="
            f"{max_bytes}; pass large data by reference (a URL or a database key) instead"
        )
