"""The Redis store's names and small helpers: the keys of an app's indexes, index scores as
times, and the digests that serve as record tokens (a record's SHA-1)."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime

from ergate_celery.model.job import Job
from ergate_celery.stores.base import ACTIVE, SCHEDULED


def app_keys(index_name: str) -> dict[str, str]:
    """The keys of an app's indexes, named after the app (`ergate_index_name`) so that apps
    sharing a Redis database never release, sweep, list or pause each other's jobs; each
    also takes the `global_keyprefix` Celery puts before its own keys.

    The job index: one sorted set per kind, scored by time, as rq's job registries. The
    listing index: sorted sets scored by `submitted_at`, one of every job (`jobs`) and, under
    that name, one per status (moved with each status change), per workflow and per tag.
    """
    base = f"ergate:{index_name}:" if index_name else "ergate:"
    return {
        SCHEDULED: f"{base}scheduled",
        ACTIVE: f"{base}active",
        "jobs": f"{base}jobs",
        "paused": f"{base}paused",
        "slots": f"{base}slots:",
    }


def score_of(at: datetime) -> float:
    """An index entry's time as its sorted-set score."""
    return at.timestamp()


def time_of(score: float) -> datetime:
    """The time an index score stands for; `score_of` of it is the score again (microsecond
    datetimes survive the round trip through a double)."""
    return datetime.fromtimestamp(score, UTC)


def text_of(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


def digest_of(raw: bytes | str) -> str:
    return hashlib.sha1(raw.encode() if isinstance(raw, str) else raw).hexdigest()


class Digests:
    """The digests of the records this process wrote last, by job object identity.

    A step's outcome is compared against the record its claim wrote: knowing that record's
    digest saves encoding the claimed job a second time. Entries hold their job, so an id
    is never reused while cached.
    """

    size = 256

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Job, str]] = {}
        self._lock = threading.Lock()

    def remember(self, job: Job, digest: str) -> None:
        with self._lock:
            if len(self._entries) >= self.size:
                del self._entries[next(iter(self._entries))]
            self._entries[id(job)] = (job, digest)

    def of(self, job: Job) -> str | None:
        entry = self._entries.get(id(job))
        return entry[1] if entry is not None and entry[0] is job else None
