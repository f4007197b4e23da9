"""The records this process wrote last, by job object identity: a step's outcome is compared
against the record its claim wrote, and knowing that record saves encoding the claimed job a
second time."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from ergate_celery.model.job import Job

T = TypeVar("T")


class LastWritten(Generic[T]):
    """What was stored for each of the last `size` jobs written (by identity, not value:
    entries hold their job, so an id is never reused while cached)."""

    size = 256

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Job, T]] = {}
        self._lock = threading.Lock()

    def remember(self, job: Job, stored: T) -> None:
        with self._lock:
            if len(self._entries) >= self.size:
                del self._entries[next(iter(self._entries))]
            self._entries[id(job)] = (job, stored)

    def of(self, job: Job) -> T | None:
        entry = self._entries.get(id(job))
        return entry[1] if entry is not None and entry[0] is job else None
