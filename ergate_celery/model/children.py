"""What a join step receives from a fan-out: one `ChildResult` per child, in input order."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ergate_celery.model.job import Job, JobError
from ergate_celery.model.job_status import JobStatus


class ChildResult(BaseModel):
    """How one child job ended: its id, its final status, its `last_return_value` (`value`;
    for a child that did not complete, what its last completed step returned) and its error
    (None unless it failed, was aborted, or is gone)."""

    job_id: str
    status: JobStatus
    value: Any = None
    error: JobError | None = None

    @property
    def ok(self) -> bool:
        """Whether the child COMPLETED."""
        return self.status is JobStatus.COMPLETED

    @classmethod
    def of(cls, job_id: str, child: Job | None) -> ChildResult:
        """The result of the child stored as `child` (None: its record is gone)."""
        if child is None:
            error = JobError(
                type="ChildGone",
                message=(
                    f"The record of child job {job_id} is gone (it expired after "
                    "result_expires); keep finished jobs longer with result_expires or "
                    "ergate_expires_by_status"
                ),
            )
            return cls(job_id=job_id, status=JobStatus.FAILED, error=error)
        return cls(
            job_id=job_id, status=child.status, value=child.last_return_value, error=child.error
        )
