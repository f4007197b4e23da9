"""Job records in Celery's in-memory result backend (`cache+memory://`), for tests.

Celery's memory cache is one dict per process, shared by every thread (its pytest fixtures run
the worker in a thread of the test process), which never expires anything and keeps at most
5,000 entries, dropping the least recently used. Each job is stored there at the key Celery
uses for a task result of the same id, as the document Celery would write, so that
`AsyncResult(job.id)` reads it. The job index, the listing and the paused workflows live beside
the cache, one set per cache and index name; one lock per process makes each write atomic.
Records follow the one expiry rule of every store, kept here: an expired record is removed at
the next access of a memory store on its cache.
"""

from __future__ import annotations

import heapq
import threading
import weakref
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from time import monotonic
from typing import Any

from ergate_celery.model.job import Job
from ergate_celery.stores.base import (
    ACTIVE,
    SCHEDULED,
    BaseJobStore,
    IndexEntry,
    Outcome,
    Stored,
    TaskResult,
    index_entry,
    job_from_document,
)
from ergate_celery.stores.key_value import job_meta
from ergate_celery.stores.listing import JobQuery, Position
from ergate_celery.stores.oversized import check_size

#: A record as stored in the cache (the backend's encoding: text for JSON); its token.
Raw = bytes | str

_lock = threading.RLock()


class _Sorted:
    """(time, job id) entries kept in order, at most one per job."""

    def __init__(self) -> None:
        self.entries: list[tuple[datetime, str]] = []
        self.at: dict[str, datetime] = {}

    def put(self, job_id: str, at: datetime) -> None:
        self.remove(job_id)
        insort(self.entries, (at, job_id))
        self.at[job_id] = at

    def remove(self, job_id: str) -> None:
        at = self.at.pop(job_id, None)
        if at is not None:
            del self.entries[bisect_left(self.entries, (at, job_id))]

    def until(self, until: datetime, limit: int) -> list[tuple[datetime, str]]:
        """The earliest entries at or before `until`, at most `limit`."""
        end = bisect_right(self.entries, until, key=lambda entry: entry[0])
        return self.entries[: min(end, limit)]

    def newest_first(self, after: Position | None) -> Iterator[tuple[datetime, str]]:
        """The entries after `after` in the newest-first order (latest time, highest id)."""
        end = len(self.entries) if after is None else bisect_left(self.entries, tuple(after))
        return reversed(self.entries[:end])


@dataclass
class _Space:
    """What an app's memory store keeps beside the cache."""

    index: dict[str, _Sorted] = field(
        default_factory=lambda: {SCHEDULED: _Sorted(), ACTIVE: _Sorted()}
    )
    listing: _Sorted = field(default_factory=_Sorted)
    paused: set[str] = field(default_factory=set)
    #: The concurrency slots documents, by name.
    slots: dict[str, str] = field(default_factory=dict)
    #: When each expiring record goes (a `monotonic` time), and the same as a heap.
    expires: dict[str, float] = field(default_factory=dict)
    expiring: list[tuple[float, str]] = field(default_factory=list)


#: The spaces of each cache (by its id, removed with the cache), by index name.
_spaces: dict[int, dict[tuple[Raw, str], _Space]] = {}


def _space_of(cache: Any, name: tuple[Raw, str]) -> _Space:
    with _lock:
        spaces = _spaces.get(id(cache))
        if spaces is None:
            spaces = _spaces[id(cache)] = {}
            weakref.finalize(cache, _spaces.pop, id(cache), None)
        return spaces.setdefault(name, _Space())


class MemoryJobStore(BaseJobStore[Raw]):
    """Stores each job in Celery's memory cache, at the key of the task result of its id; its
    token is the stored value, compared under the lock."""

    writes_task_result = True

    def __init__(
        self,
        backend: Any,
        max_bytes: int,
        expires_by_status: Mapping[str, int] | None = None,
        index_name: str = "",
    ) -> None:
        super().__init__(backend, max_bytes, expires_by_status)
        self.client = backend.client
        # The task key prefix holds `global_keyprefix`: apps apart in the cache are apart here.
        name = (backend.task_keyprefix, index_name)
        self._space = _space_of(getattr(self.client, "cache", self.client), name)

    def _key(self, job_id: str) -> Any:
        return self.backend.get_key_for_task(job_id)

    def _encode(self, job: Job, limit: int | None = None, *, check: bool = True) -> Raw:
        encoded: Raw = self.backend.encode(job_meta(job, self.clock()))
        if check:
            check_size(job, encoded, limit or self.max_bytes)
        return encoded

    def _stored(self, raw: Raw) -> Stored[Raw]:
        return Stored(job_from_document(self.backend.decode(raw)["result"]), raw)

    def _purge(self) -> None:
        """Remove the records whose time is up (called with the lock held)."""
        space, now = self._space, monotonic()
        while space.expiring and space.expiring[0][0] <= now:
            at, job_id = heapq.heappop(space.expiring)
            if space.expires.get(job_id) == at:  # else written again since
                self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        space = self._space
        self.client.delete(self._key(job_id))
        for entries in (*space.index.values(), space.listing):
            entries.remove(job_id)
        space.expires.pop(job_id, None)

    def _write(self, job: Job, encoded: Raw) -> None:
        """Store `job` as `encoded`, reindexed, with its expiry (called with the lock held)."""
        job_id, space = str(job.id), self._space
        self.client.set(self._key(job_id), encoded)
        entry = index_entry(job, now=self.clock())
        for kind, entries in space.index.items():
            if entry is not None and entry.kind == kind:
                entries.put(job_id, entry.at)
            else:
                entries.remove(job_id)
        kept = self.expires_after(job)
        if kept is None:
            space.expires.pop(job_id, None)
        else:
            space.expires[job_id] = monotonic() + kept
            heapq.heappush(space.expiring, (space.expires[job_id], job_id))

    def _read(self, job_id: str) -> Stored[Raw] | None:
        with _lock:
            self._purge()
            raw = self.client.get(self._key(job_id))
        return None if raw is None else self._stored(raw)

    def _token_of(self, job: Job) -> Raw:
        return self._encode(job, check=False)

    def _compare_and_set(
        self,
        job_id: str,
        expected: Raw,
        new: Job,
        result: TaskResult | None,
        limit: int | None = None,
    ) -> Stored[Raw] | Outcome:
        encoded = self._encode(new, limit)
        with _lock:
            self._purge()
            raw = self.client.get(self._key(job_id))
            if raw is None:
                return Outcome.GONE
            if raw != expected:
                return self._stored(raw)
            self._write(new, encoded)
            if result is not None:
                result.store_after(self.backend, new)
        return Outcome.WRITTEN

    def _insert(self, job: Job) -> bool:
        encoded = self._encode(job, self.create_limit)
        with _lock:
            self._purge()
            if self.client.get(self._key(str(job.id))) is not None:
                return False
            self._write(job, encoded)
            if job.submitted_at is not None:
                self._space.listing.put(str(job.id), job.submitted_at)
        return True

    def delete(self, job_id: str) -> None:
        with _lock:
            self._forget(job_id)

    def index_entries(self, kind: str, until: datetime, limit: int) -> list[IndexEntry]:
        with _lock:
            self._purge()
            found = self._space.index[kind].until(until, limit)
        return [IndexEntry(kind, job_id, at) for at, job_id in found]

    def drop_index_entry(self, entry: IndexEntry) -> bool:
        with _lock:
            entries = self._space.index[entry.kind]
            if entries.at.get(entry.job_id) != entry.at:
                return False
            entries.remove(entry.job_id)
        return True

    def _listed(
        self, query: JobQuery, after: Position | None, count: int
    ) -> list[tuple[Position, Job | None]]:
        # Every filter is applied here: reading a record costs no round trip.
        listed: list[tuple[Position, Job | None]] = []
        with _lock:
            self._purge()
            gone = []
            for at, job_id in self._space.listing.newest_first(after):
                raw = self.client.get(self._key(job_id))
                job = None if raw is None else self._stored(raw).job
                if job is None:
                    gone.append(job_id)
                elif not query.matches(job):
                    continue
                listed.append((Position(at, job_id), job))
                if len(listed) == count:
                    break
            for job_id in gone:  # removed outside the store (`forget()`): trim the listing
                self._space.listing.remove(job_id)
        return listed

    def paused_workflows(self) -> set[str]:
        with _lock:
            return set(self._space.paused)

    def set_paused(self, workflow_name: str, paused: bool) -> bool:
        with _lock:
            names = self._space.paused
            if (workflow_name in names) == paused:
                return False
            if paused:
                names.add(workflow_name)
            else:
                names.discard(workflow_name)
        return True

    # Concurrency slots.

    def _read_slots(self, name: str) -> str | None:
        with _lock:
            return self._space.slots.get(name)

    def _swap_slots(self, name: str, expected: str | bytes | None, new: str | None) -> bool:
        with _lock:
            slots = self._space.slots
            if slots.get(name) != expected:
                return False
            if new is None:
                slots.pop(name, None)
            else:
                slots[name] = new
        return True
