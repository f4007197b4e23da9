"""`BaseJobStore`: the logic every job store shares (create, update, expiry, waiting), on top
of a few primitives each backend supplies; the interface itself is in `interface.py`."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Final, Generic, NamedTuple, TypeVar

from pydantic import ValidationError

from ergate_celery.exceptions import DuplicateJobError, InvalidInputError
from ergate_celery.lifecycle.events import Claim
from ergate_celery.lifecycle.publishing import PUBLISH_GRACE, awaits_publish
from ergate_celery.lifecycle.waiting import due_at
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.stores.clock import StoreClock
from ergate_celery.stores.flow import FlowControl
from ergate_celery.stores.interface import (  # re-exported: imported from here
    Change as Change,
)
from ergate_celery.stores.interface import (
    IndexEntry as IndexEntry,
)
from ergate_celery.stores.interface import (
    JobStore as JobStore,
)
from ergate_celery.stores.interface import (
    Updated as Updated,
)
from ergate_celery.stores.listing import JobPage, JobQuery, Position, list_page
from ergate_celery.stores.oversized import fitted, is_outcome, outcome_limit
from ergate_celery.stores.task_result import (
    TaskResult as TaskResult,  # re-exported: imported from here
)

#: What a backend's compare-and-set compares: a digest on Redis, the stored columns on SQL.
Token = TypeVar("Token")


#: What reading a record that is not a job raises (as opposed to a backend that is down).
UNREADABLE = (ValidationError, KeyError, TypeError, ValueError)

#: A new record may take all but 1/CREATE_HEADROOM of `ergate_max_payload_bytes`.
CREATE_HEADROOM: Final = 10

SCHEDULED: Final = "scheduled"
ACTIVE: Final = "active"


def utc_now() -> datetime:
    """The current time, as a store or the runtime reads it unless handed another clock."""
    return datetime.now(UTC)


def index_entry(
    job: Job, *, pending: bool = False, now: datetime | None = None
) -> IndexEntry | None:
    """Where a job belongs in the job index, written with every change of its record; final
    jobs are not indexed, nor PENDING ones unless `pending`. An active job (parked ones too,
    which the sweep looks at after a resume or a freed slot went astray) is indexed at `now`
    (default: the current time).

    A store whose records live inside the Django transaction (django-db) indexes PENDING jobs
    as active (one it can read was committed: the sweep hands it over if its commit hook never
    ran); elsewhere one may belong to a rolled-back transaction, and is left to expire."""
    if job.status is JobStatus.SCHEDULED:
        return IndexEntry(SCHEDULED, str(job.id), due_at(job))
    if job.is_final or (job.status is JobStatus.PENDING and not pending):
        return None
    at = now or utc_now()
    if awaits_publish(job):
        # Its caller may die before publishing: beat's release publishes it after the grace.
        grace_ends = job.lease_until or at + timedelta(seconds=PUBLISH_GRACE)
        return IndexEntry(SCHEDULED, str(job.id), grace_ends)
    if job.claim is None and job.lease_until is not None:
        # Waiting for its message (a retry's countdown, a republish's hold): the sweep's
        # idleness counts from the end of the wait.
        at = max(at, job.lease_until)
    return IndexEntry(ACTIVE, str(job.id), at)


def expiring(job: Job) -> bool:
    """Whether the record follows `result_expires` (one rule on every backend): a final job,
    or a PENDING one never handed over (rolled back, or its process died before publishing).
    Any other waits for something to move it, so it never expires: Celery would expire any
    result, and its `backend_cleanup` deletes old rows whatever their status."""
    return job.is_final or job.status is JobStatus.PENDING


def seconds(expires: Any) -> float | None:
    """A backend's `expires` (seconds, a timedelta, or None) in seconds."""
    if isinstance(expires, timedelta):
        return expires.total_seconds()
    return float(expires) if expires else None


class Stored(NamedTuple, Generic[Token]):
    """A record as read, with what its compare-and-set compares against."""

    job: Job
    token: Token


@dataclass(frozen=True)
class ClaimedInOne:
    """What a one-round-trip claim found: `after` is the claimed record as written; when the
    common case did not hold, `after` is None and `before` is the record as stored (None: no
    record), to run the Python transition on without another read."""

    before: Job | None
    after: Job | None


class Outcome(Enum):
    """What a compare-and-set did, when it did not find another record (a `Stored`)."""

    WRITTEN = "written"
    GONE = "gone"


class BaseJobStore(FlowControl, ABC, Generic[Token]):
    """The store logic written once: the update loop, the duplicate-id error, polling for the
    end, the index queries. A backend's module supplies the primitives below (the abstract
    methods), each one atomic on its backend, with `Token` its compare-and-set's token."""

    #: Whether `_compare_and_set` writes the step task's result itself (in the same atomic
    #: write); otherwise it is stored right after the job's change.
    writes_task_result = False
    joins_django_transaction = False

    def __init__(
        self, backend: Any, max_bytes: int, expires_by_status: Mapping[str, int] | None = None
    ) -> None:
        self.backend = backend
        self.max_bytes = max_bytes
        self.expires_by_status = dict(expires_by_status or {})
        #: A new record may take this much: the rest of `max_bytes` is room for what a job
        #: gathers as it runs (timings, claims, recoveries, an error with its traceback).
        self.create_limit = max_bytes - max_bytes // CREATE_HEADROOM
        #: The store's clock: what `finished_at` and index entries are stamped with, and what
        #: leases and due times are compared with (a test's virtual clock may replace it).
        self.clock: Callable[[], datetime] = StoreClock(self._server_time)

    # The primitives.

    @abstractmethod
    def _read(self, job_id: str) -> Stored[Token] | None:
        """The stored record and its token, or None."""

    @abstractmethod
    def _token_of(self, job: Job) -> Token:
        """The token of `job` as it would be stored (for an assumed record, never read)."""

    @abstractmethod
    def _compare_and_set(
        self,
        job_id: str,
        expected: Token,
        new: Job,
        result: TaskResult | None,
        limit: int | None = None,
    ) -> Stored[Token] | Outcome:
        """Write `new` (size-checked against `limit`, default `max_bytes`; reindexed) if the
        record's token is `expected`; else the record found instead, or `Outcome.GONE`.
        `result` only if `writes_task_result`."""

    @abstractmethod
    def _insert(self, job: Job) -> bool:
        """Store `job` (indexed) unless its id is taken; whether it was stored."""

    @abstractmethod
    def delete(self, job_id: str) -> None:
        """Remove a job record and its index entry."""

    @abstractmethod
    def index_entries(self, kind: str, until: datetime, limit: int) -> list[IndexEntry]:
        """See `JobStore.index_entries`."""

    @abstractmethod
    def drop_index_entry(self, entry: IndexEntry) -> bool:
        """See `JobStore.drop_index_entry`."""

    @abstractmethod
    def _listed(
        self, query: JobQuery, after: Position | None, count: int
    ) -> list[tuple[Position, Job | None]]:
        """The next `count` listing entries after `after` for `query`, newest first, as many
        of the query's filters applied as the index serves; a gone record's job is None (and
        its entry is trimmed)."""

    @abstractmethod
    def paused_workflows(self) -> set[str]:
        """See `JobStore.paused_workflows`."""

    @abstractmethod
    def set_paused(self, workflow_name: str, paused: bool) -> bool:
        """See `JobStore.set_paused`."""

    def _server_time(self) -> datetime | None:
        """The current time by the store server's clock; None: the store has no server of its
        own, and the process's clock is its clock."""
        return None

    def claim_in_one(self, job_id: str, claim: Claim, now: datetime) -> ClaimedInOne | None:
        """None: this store has no one-round-trip claim (the caller reads and compares-and-sets)."""
        return None

    def close(self) -> None:
        """See `JobStore.close`; most stores hold nothing of their own."""

    def _drop_leftovers(self, job_id: str) -> bool:
        """If no record holds `job_id`, remove what an expired one left (listing, tags, index
        rows a backend's own cleanup does not know); whether the id is free."""
        return False

    def expires_after(self, job: Job) -> float | None:
        """Seconds the record of `job` is kept from now: None while it must not expire
        (`expiring`), else its status's `ergate_expires_by_status` or `result_expires`."""
        if not expiring(job):
            return None
        kept = self.expires_by_status.get(job.status.name)
        return float(kept) if kept is not None else seconds(self.backend.expires)

    def list_jobs(self, query: JobQuery, limit: int, cursor: str | None) -> JobPage:
        """See `JobStore.list_jobs`."""
        return list_page(self._listed, query, limit, cursor)

    # The logic on top of them.

    def create(self, job: Job, *, unless_paused: bool = False) -> Job:
        """See `JobStore.create`; what an expired record left behind does not hold its id."""
        stored = self._created(job, unless_paused)
        if stored is None and self._drop_leftovers(str(job.id)):
            stored = self._created(job, unless_paused)
        if stored is None:
            raise DuplicateJobError(
                f"A job with id {job.id!r} already exists; submit without id= to get a new "
                'one, or with if_exists="return" to get the existing job'
            )
        return stored

    def get(self, job_id: str) -> Job | None:
        """The stored job, or None."""
        stored = self._read(job_id)
        return None if stored is None else stored.job

    def get_many(self, job_ids: list[str]) -> list[Job | None]:
        """See `JobStore.get_many`; here one read per job."""
        return [self.get(job_id) for job_id in job_ids]

    def create_many(self, jobs: list[Job]) -> list[bool]:
        """See `JobStore.create_many`; here one write per job."""
        return [self._create_one(job) for job in jobs]

    def _create_one(self, job: Job) -> bool:
        try:
            self.create(job)
        except DuplicateJobError:
            return False
        return True

    def update(
        self,
        job_id: str,
        change: Change,
        *,
        assume: Job | None = None,
        result: TaskResult | None = None,
    ) -> Updated:
        """See `JobStore.update`."""
        # `token` is None while `job` is only assumed: worked out if a write needs it.
        token: Token | None = None
        if assume is not None:
            job = assume
        else:
            stored = self._read(job_id)
            if stored is None:
                return Updated(None, None)
            job, token = stored
        while True:
            new = change(job)
            if new is None:
                if token is not None:
                    return Updated(job, None)
                # The assumption may be wrong: look at the record before giving up.
                stored = self._read(job_id)
                if stored is None:
                    return Updated(None, None)
                job, token = stored
                continue
            new = stamped(new, self.clock)
            expected = self._token_of(job) if token is None else token
            # A step's outcome leaves room for the lifecycle's own writes (oversized.py).
            limit = outcome_limit(self.max_bytes) if is_outcome(job, new) else None
            try:
                reply = self._compare_and_set(job_id, expected, new, result, limit)
            except InvalidInputError as exc:
                if not exc.oversized:
                    raise
                new = fitted(new, limit, exc)
                reply = self._compare_and_set(job_id, expected, new, result, limit)
            if reply is Outcome.WRITTEN:
                if result is not None and not self.writes_task_result:
                    result.store_after(self.backend, new)
                return Updated(job, new)
            if reply is Outcome.GONE:
                return Updated(None, None)
            job, token = reply

    def wait_final(self, job_id: str, timeout: float | None, poll_interval: float) -> Job | None:
        """See `JobStore.wait_final`; here by reading the record every `poll_interval` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job is None or job.is_final:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                return job
            time.sleep(poll_interval)

    def due(self, now: datetime, limit: int) -> list[str]:
        """SCHEDULED jobs due at `now`, earliest first."""
        return [entry.job_id for entry in self.index_entries(SCHEDULED, now, limit)]

    def stale(self, before: datetime, limit: int) -> list[str]:
        """QUEUED/RUNNING/CANCELLING jobs last changed before `before`, oldest first."""
        return [entry.job_id for entry in self.index_entries(ACTIVE, before, limit)]


def stamped(job: Job, clock: Callable[[], datetime]) -> Job:
    """The job with `finished_at` set when it has just become final (the clock read then)."""
    if job.is_final and job.finished_at is None:
        return job.model_copy(update={"finished_at": clock()})
    return job


def job_document(job: Job) -> dict[str, Any]:
    """The job as the JSON document stored as the Celery result."""
    return job.model_dump(mode="json")


def job_from_document(document: Any) -> Job:
    """Rebuild a job from its stored document."""
    return Job.model_validate(document)
