"""Job records on the Redis result backend: one key per job, changed under WATCH."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis.exceptions import WatchError

from ..exceptions import DuplicateJobError
from ..job import Job
from ..job_status import JobStatus
from .base import (
    ACTIVE,
    SCHEDULED,
    Change,
    check_size,
    index_entry,
    job_document,
    job_from_document,
    stamped,
)

#: The job index: one sorted set per kind, scored by time, as rq's job registries.
INDEX_KEYS = {SCHEDULED: "ergate:scheduled", ACTIVE: "ergate:active"}


# Compare-and-set in one round trip: write the record (and move its index entry) only if the
# stored bytes are still those the change was computed from.
_COMPARE_AND_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[4])
if ARGV[5] == 'scheduled' then redis.call('ZADD', KEYS[2], ARGV[6], ARGV[4]) end
if ARGV[5] == 'active' then redis.call('ZADD', KEYS[3], ARGV[6], ARGV[4]) end
return 1
"""


def _duplicate(job: Job) -> DuplicateJobError:
    return DuplicateJobError(
        f"A job with id {job.id!r} already exists; submit without id= to get a new one"
    )


class RedisJobStore:
    """Stores each job at the key Celery uses for a task result of the same id."""

    def __init__(self, backend: Any, max_bytes: int) -> None:
        self.backend = backend
        self.max_bytes = max_bytes
        self._compare_and_set = backend.client.register_script(_COMPARE_AND_SET)

    @property
    def client(self) -> Any:
        return self.backend.client

    def _key(self, job_id: str) -> bytes:
        key: bytes = self.backend.get_key_for_task(job_id)
        return key

    def _encode(self, job: Job) -> tuple[bytes, int | None]:
        final = job.is_final
        meta: dict[str, Any] = {
            "status": job.status.name,
            "result": job_document(job),
            "traceback": job.error.traceback if job.error else None,
            "children": [],
            "date_done": datetime.now(UTC).isoformat() if final else None,
            "task_id": str(job.id),
        }
        encoded: bytes = self.backend.encode(meta)
        check_size(job, encoded, self.max_bytes)
        # Only a finished (or never handed over) job may expire: Celery would put
        # result_expires on every write, unfinished jobs included.
        expiring = final or job.status is JobStatus.PENDING
        return encoded, (self.backend.expires or None) if expiring else None

    def _decode(self, raw: bytes) -> Job:
        return job_from_document(self.backend.decode(raw)["result"])

    def _write(self, pipe: Any, job: Job) -> None:
        """Queue the record and its index entry on a MULTI pipeline."""
        encoded, ttl = self._encode(job)
        job_id = str(job.id)
        pipe.set(self._key(job_id), encoded, ex=ttl)
        entry = index_entry(job)
        for kind, key in INDEX_KEYS.items():
            if entry is not None and entry[0] == kind:
                pipe.zadd(key, {job_id: entry[1].timestamp()})
            else:
                pipe.zrem(key, job_id)

    def create(self, job: Job) -> None:
        key = self._key(str(job.id))
        with self.client.pipeline() as pipe:
            pipe.watch(key)
            if pipe.exists(key):
                pipe.unwatch()
                raise _duplicate(job)
            pipe.multi()
            self._write(pipe, job)
            try:
                pipe.execute()
            except WatchError:
                raise _duplicate(job) from None

    def get(self, job_id: str) -> Job | None:
        raw = self.client.get(self._key(job_id))
        return None if raw is None else self._decode(raw)

    def update(self, job_id: str, change: Change) -> Job | None:
        key = self._key(job_id)
        keys = [key, INDEX_KEYS[SCHEDULED], INDEX_KEYS[ACTIVE]]
        while True:
            raw = self.client.get(key)
            new = None if raw is None else change(self._decode(raw))
            if new is None:
                return None
            new = stamped(new)
            encoded, ttl = self._encode(new)
            kind, at = index_entry(new) or ("", None)
            arguments = [raw, encoded, ttl or "", job_id, kind, at.timestamp() if at else ""]
            if self._compare_and_set(keys=keys, args=arguments):
                return new

    def delete(self, job_id: str) -> None:
        with self.client.pipeline() as pipe:
            pipe.delete(self._key(job_id))
            for key in INDEX_KEYS.values():
                pipe.zrem(key, job_id)
            pipe.execute()

    def _range(self, kind: str, until: datetime, limit: int) -> list[str]:
        ids = self.client.zrangebyscore(INDEX_KEYS[kind], "-inf", until.timestamp(), 0, limit)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def due(self, now: datetime, limit: int) -> list[str]:
        return self._range(SCHEDULED, now, limit)

    def stale(self, before: datetime, limit: int) -> list[str]:
        return self._range(ACTIVE, before, limit)
