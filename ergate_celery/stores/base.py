"""The job store interface: where a job's record lives, inside the Celery result backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from celery import states

from ..exceptions import InvalidInputError
from ..job import Job
from ..job_status import JobStatus

#: Computes the job to write from the job stored now, or None to leave the record alone.
#: It may be called more than once when a concurrent write wins a race, so it must be pure.
Change = Callable[[Job], Job | None]


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


class JobStore(Protocol):
    """Reads and atomically changes job records; one implementation per result backend."""

    def create(self, job: Job) -> None:
        """Store a new job; `DuplicateJobError` if its id is taken (that record is untouched).

        A SCHEDULED job is added to the due-time index in the same atomic write.
        """

    def get(self, job_id: str) -> Job | None:
        """The stored job, or None."""

    def update(
        self,
        job_id: str,
        change: Change,
        *,
        assume: Job | None = None,
        result: TaskResult | None = None,
    ) -> Job | None:
        """Apply `change` atomically (compare-and-set); the job written, or None.

        `assume` is the job the caller believes is stored (the one it last wrote, or the one a
        step message carries): the store then writes `change(assume)` against it without
        reading first, and reads only when the record turns out to differ. `result` is stored
        exactly when a change is written.
        """

    def wait_final(self, job_id: str, timeout: float | None, poll_interval: float) -> Job | None:
        """The job once final, or as it is when `timeout` s have passed; None if it is gone.

        Stores that can be told when a job ends (Redis publishes it) wait for that; the
        others read every `poll_interval` s.
        """

    def delete(self, job_id: str) -> None:
        """Remove a job record (used to undo a submission whose publish failed)."""

    def due(self, now: datetime, limit: int) -> list[str]:
        """SCHEDULED jobs due at `now`, earliest first: a range query on the index."""

    def stale(self, before: datetime, limit: int) -> list[str]:
        """QUEUED/RUNNING/CANCELLING jobs last changed before `before`, oldest first."""


def poll_until_final(
    store: JobStore, job_id: str, timeout: float | None, poll_interval: float
) -> Job | None:
    """`JobStore.wait_final` by reading the record every `poll_interval` s."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = store.get(job_id)
        if job is None or job.is_final:
            return job
        if deadline is not None and time.monotonic() >= deadline:
            return job
        time.sleep(poll_interval)


def stamped(job: Job) -> Job:
    """The job with `finished_at` set when it has just become final (done at every write)."""
    if job.is_final and job.finished_at is None:
        return job.model_copy(update={"finished_at": datetime.now(UTC)})
    return job


def job_document(job: Job) -> dict[str, Any]:
    """The job as the JSON document stored as the Celery result."""
    return job.model_dump(mode="json")


def job_from_document(document: Any) -> Job:
    """Rebuild a job from its stored document."""
    return Job.model_validate(document)


SCHEDULED, ACTIVE = "scheduled", "active"


def index_entry(job: Job) -> tuple[str, datetime] | None:
    """Where a job belongs in the job index, written with every change of its record.

    SCHEDULED jobs by due time (for beat's release); QUEUED, RUNNING and CANCELLING jobs by
    the time of their last change (for the stuck-job sweep); final jobs are not indexed.
    """
    if job.status is JobStatus.SCHEDULED:
        assert job.requested_start_time is not None, "a SCHEDULED job has a start time"
        return SCHEDULED, job.requested_start_time
    if job.is_final or job.status is JobStatus.PENDING:
        return None
    return ACTIVE, datetime.now(UTC)


def check_size(job: Job, encoded: bytes | str, max_bytes: int) -> None:
    """Refuse a record larger than `ergate_max_payload_bytes`."""
    size = len(encoded)
    if size > max_bytes:
        raise InvalidInputError(
            f"Job {job.id!r} would take {size} bytes, over ergate_max_payload_bytes="
            f"{max_bytes}; pass large data by reference (a URL or a database key) instead",
            oversized=True,
        )
