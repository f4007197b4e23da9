"""Job records on the Redis result backend: one key per job, changed under WATCH."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis.exceptions import WatchError

from ..exceptions import DuplicateJobError
from ..job import Job
from ..job_status import JobStatus
from .base import Change, check_size, due_at, job_document, job_from_document

#: Sorted set of scheduled job ids scored by due time, as rq's ScheduledJobRegistry.
SCHEDULED_KEY = "ergate:scheduled"


def _duplicate(job: Job) -> DuplicateJobError:
    return DuplicateJobError(
        f"A job with id {job.id!r} already exists; submit without id= to get a new one"
    )


class RedisJobStore:
    """Stores each job at the key Celery uses for a task result of the same id."""

    def __init__(self, backend: Any, max_bytes: int) -> None:
        self.backend = backend
        self.max_bytes = max_bytes

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
        # Only a finished job may expire: Celery would put result_expires on every write.
        return encoded, (self.backend.expires or None) if final else None

    def _decode(self, raw: bytes) -> Job:
        return job_from_document(self.backend.decode(raw)["result"])

    def create(self, job: Job) -> None:
        encoded, ttl = self._encode(job)
        key = self._key(str(job.id))
        if job.status is not JobStatus.SCHEDULED:
            if not self.client.set(key, encoded, nx=True, ex=ttl):
                raise _duplicate(job)
            return
        with self.client.pipeline() as pipe:
            # The record and its index entry are written together or not at all.
            pipe.watch(key)
            if pipe.exists(key):
                pipe.unwatch()
                raise _duplicate(job)
            pipe.multi()
            pipe.set(key, encoded, ex=ttl)
            pipe.zadd(SCHEDULED_KEY, {str(job.id): due_at(job).timestamp()})
            try:
                pipe.execute()
            except WatchError:
                raise _duplicate(job) from None

    def due(self, now: datetime, limit: int) -> list[str]:
        ids = self.client.zrangebyscore(SCHEDULED_KEY, "-inf", now.timestamp(), 0, limit)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def unschedule(self, job_id: str) -> None:
        self.client.zrem(SCHEDULED_KEY, job_id)

    def get(self, job_id: str) -> Job | None:
        raw = self.client.get(self._key(job_id))
        return None if raw is None else self._decode(raw)

    def update(self, job_id: str, change: Change) -> Job | None:
        key = self._key(job_id)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    new = None if raw is None else change(self._decode(raw))
                    if new is None:
                        pipe.unwatch()
                        return None
                    encoded, ttl = self._encode(new)
                    pipe.multi()
                    pipe.set(key, encoded, ex=ttl)
                    pipe.execute()
                    return new
                except WatchError:
                    continue

    def delete(self, job_id: str) -> None:
        self.client.delete(self._key(job_id))
