"""The job store interface (`JobStore`) and the types it speaks: where a job's record lives,
inside the Celery result backend."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple, Protocol

from ergate_celery.lifecycle.slots import Slots
from ergate_celery.model.job import Job
from ergate_celery.stores.listing import JobPage, JobQuery
from ergate_celery.stores.task_result import TaskResult

#: Computes the job to write from the job stored now, or None to leave the record alone.
#: Called again when a concurrent write wins a race, so pure: `update` returns what it read.
Change = Callable[[Job], Job | None]


class Updated(NamedTuple):
    """What `JobStore.update` did: the record its change was computed from, the job written."""

    before: Job | None
    after: Job | None


class IndexEntry(NamedTuple):
    """One entry of the job index: SCHEDULED jobs by due time (for beat's release), QUEUED,
    RUNNING and CANCELLING jobs by the time of their last change (for the stuck-job sweep)."""

    kind: str
    job_id: str
    at: datetime


class JobStore(Protocol):
    """Reads and atomically changes job records; one implementation per result backend."""

    #: Whether its writes join the caller's Django transaction (django-db's do).
    joins_django_transaction: bool

    def create(self, job: Job, *, unless_paused: bool = False) -> Job:
        """Store a new job; `DuplicateJobError` if its id is taken (that record is untouched).
        With `unless_paused`, a job of a paused workflow is stored parked, in the same write.
        Returns the job as stored. A SCHEDULED job is indexed in the same atomic write.
        """

    def get(self, job_id: str) -> Job | None:
        """The stored job, or None."""

    def get_many(self, job_ids: list[str]) -> list[Job | None]:
        """The stored jobs of `job_ids`, in order (None for a gone one), in one round trip
        where the backend can."""

    def create_many(self, jobs: list[Job]) -> list[bool]:
        """Store each of `jobs` unless its id is taken (that record is untouched), as `create`
        does each one, in one round trip where the backend can; whether each was stored."""

    def update(
        self,
        job_id: str,
        change: Change,
        *,
        assume: Job | None = None,
        result: TaskResult | None = None,
    ) -> Updated:
        """Apply `change` atomically (compare-and-set); the record it was computed from and
        the job written (None: the change left the record alone, or there is none).

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

    def index_entries(self, kind: str, until: datetime, limit: int) -> list[IndexEntry]:
        """Index entries of `kind` (`SCHEDULED` or `ACTIVE`) at or before `until`, earliest
        first: a range query on the index, whose cost follows `limit`, not the index size."""

    def drop_index_entry(self, entry: IndexEntry) -> bool:
        """Remove `entry` if it is still there with the same time; whether it was.

        For an entry whose record is gone or no longer matches: an entry that a concurrent
        write has just moved (same job, new time) survives.
        """

    def due(self, now: datetime, limit: int) -> list[str]:
        """SCHEDULED jobs due at `now`, earliest first: a range query on the index."""

    def stale(self, before: datetime, limit: int) -> list[str]:
        """QUEUED/RUNNING/CANCELLING jobs last changed before `before`, oldest first."""

    def close(self) -> None:
        """Release the connections this store holds of its own (the app's are Celery's)."""

    @property
    def clock(self) -> Callable[[], datetime]:
        """The store's clock (`StoreClock`): what leases, due times and idleness are decided
        by, in every process of the app."""

    def list_jobs(self, query: JobQuery, limit: int, cursor: str | None) -> JobPage:
        """Jobs matching `query`, newest first (by `submitted_at`), finished ones until they
        expire; a page costs what it reads, not what is stored."""

    def paused_workflows(self) -> set[str]:
        """The names of the paused workflows, as stored (shared by every process)."""

    def set_paused(self, workflow_name: str, paused: bool) -> bool:
        """Pause or resume `workflow_name`; whether that changed anything."""

    def slots(self, name: str) -> Slots:
        """See `FlowControl.slots`."""

    def take_slot(self, name: str, job_id: str, submitted_at: str, limit: int) -> bool:
        """See `FlowControl.take_slot`."""

    def free_slot(self, name: str, job_id: str) -> list[str]:
        """See `FlowControl.free_slot`."""
