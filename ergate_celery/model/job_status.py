"""The statuses a job moves through, with Ergate 0.6's names, values and order."""

from enum import IntEnum


class JobStatus(IntEnum):
    """Where a job is in its life; the stored Celery state is the member's name."""

    SCHEDULED = 1
    """Waits for its `requested_start_time`; Celery beat releases it."""
    QUEUED = 2
    """Its current step's task is published and waits for a worker."""
    RUNNING = 3
    """A worker is running its current step."""
    COMPLETED = 4
    """Every step that had to run has run."""
    FAILED = 5
    """A step raised, or the job could not be carried on; `Job.error` says why."""
    ABORTED = 6
    """A step raised `AbortJob`: an expected stop, no further steps run."""
    PENDING = 7
    """Created but not handed to the queue (kept for Ergate compatibility)."""
    CANCELLING = 8
    """Cancel was asked while a step ran; it ends at the next step boundary."""
    CANCELLED = 9
    """Cancelled; no further steps run."""

    @property
    def is_final(self) -> bool:
        """True when nothing will change the job any more."""
        return self in FINAL_STATUSES


# The groups of statuses the package reasons with, named once here and imported.

#: Nothing will change the job any more (but `retry_job`).
FINAL_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ABORTED, JobStatus.CANCELLED}
)
#: The final statuses `retry_job` accepts.
RETRYABLE_STATUSES = FINAL_STATUSES - {JobStatus.COMPLETED}
#: A step of the job is running: the run holds the job's claim until its outcome is stored.
RUNNING_STATUSES = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING})
#: No step runs and the job is not final: it waits for a commit, its start time or a worker.
WAITING_STATUSES = frozenset({JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.QUEUED})
#: The statuses `cancel_job` changes: CANCELLED at once, or CANCELLING while a step runs.
CANCELLABLE_STATUSES = WAITING_STATUSES | {JobStatus.RUNNING}
#: What the stuck-job sweep watches: waiting for a worker, a running step or a commit hook
#: (PENDING is indexed only on django-db, where a readable PENDING record was committed).
ACTIVE_STATUSES = frozenset(
    {JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING}
)
