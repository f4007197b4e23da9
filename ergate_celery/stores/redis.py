"""Job records on the Redis result backend: one key per job, changed by Lua compare-and-set."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

from celery import states

from ..exceptions import DuplicateJobError
from ..job import Job
from ..job_status import JobStatus
from .base import (
    ACTIVE,
    SCHEDULED,
    Change,
    TaskResult,
    check_size,
    index_entry,
    job_document,
    job_from_document,
    stamped,
)

#: The job index: one sorted set per kind, scored by time, as rq's job registries.
INDEX_KEYS = {SCHEDULED: "ergate:scheduled", ACTIVE: "ergate:active"}


# Shared by the scripts below: a write with an optional TTL ('' for none), and the move of a
# job's entry into the index of its kind ('' for not indexed).
_LUA_HELPERS = """
local function put(key, value, ttl)
  if ttl == '' then
    redis.call('SET', key, value)
  else
    redis.call('SET', key, value, 'EX', ttl)
  end
end
local function index(scheduled, active, id, kind, at)
  redis.call('ZREM', scheduled, id)
  redis.call('ZREM', active, id)
  if kind == 'scheduled' then redis.call('ZADD', scheduled, at, id) end
  if kind == 'active' then redis.call('ZADD', active, at, id) end
end
"""

# Compare-and-set in one round trip: the record is written (and its index entry moved) only if
# the SHA-1 of its stored bytes is the one the change was computed from. On a mismatch the
# stored bytes come back, so the caller computes again without another read. A final record
# is also published on its key, for waiters. KEYS[4], when given, is the step task's result
# key: written in the same script, as Celery would write it.
_COMPARE_AND_SET = (
    _LUA_HELPERS
    + """
local current = redis.call('GET', KEYS[1])
if not current then return false end
if redis.sha1hex(current) ~= ARGV[1] then return current end
put(KEYS[1], ARGV[2], ARGV[3])
index(KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[6])
if ARGV[7] == '1' then redis.call('PUBLISH', KEYS[1], ARGV[2]) end
if KEYS[4] then
  put(KEYS[4], ARGV[8], ARGV[9])
  redis.call('PUBLISH', KEYS[4], ARGV[8])
end
return 1
"""
)

# Create in one round trip: nothing is written when the id is taken.
_CREATE = (
    _LUA_HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
put(KEYS[1], ARGV[1], ARGV[2])
index(KEYS[2], KEYS[3], ARGV[3], ARGV[4], ARGV[5])
return 1
"""
)


def _digest(raw: bytes | str) -> str:
    return hashlib.sha1(raw.encode() if isinstance(raw, str) else raw).hexdigest()


class _Digests:
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
        self._create = backend.client.register_script(_CREATE)
        self._digests = _Digests()
        self._json = backend.serializer == "json"
        self._extended = bool(backend.app.conf.find_value_for_key("extended", "result"))

    @property
    def client(self) -> Any:
        return self.backend.client

    def _key(self, job_id: str) -> bytes:
        key: bytes = self.backend.get_key_for_task(job_id)
        return key

    def _encode(self, job: Job, *, check: bool = True) -> tuple[bytes, int | None]:
        final = job.is_final
        traceback = job.error.traceback if job.error else None
        date_done = datetime.now(UTC).isoformat() if final else None
        if self._json:
            # The meta document Celery would write, with the job serialized by pydantic
            # straight to JSON: one pass instead of a dump to Python objects and an encode.
            encoded = (
                f'{{"status": "{job.status.name}", "result": {job.model_dump_json()}, '
                f'"traceback": {json.dumps(traceback)}, "children": [], '
                f'"date_done": {json.dumps(date_done)}, "task_id": {json.dumps(str(job.id))}}}'
            ).encode()
        else:
            meta: dict[str, Any] = {
                "status": job.status.name,
                "result": job_document(job),
                "traceback": traceback,
                "children": [],
                "date_done": date_done,
                "task_id": str(job.id),
            }
            encoded = self.backend.encode(meta)
        if check:
            check_size(job, encoded, self.max_bytes)
        # Only a finished (or never handed over) job may expire: Celery would put
        # result_expires on every write, unfinished jobs included.
        expiring = final or job.status is JobStatus.PENDING
        return encoded, (self.backend.expires or None) if expiring else None

    def _decode(self, raw: bytes) -> Job:
        return job_from_document(self.backend.decode(raw)["result"])

    def _index_arguments(self, job: Job) -> list[Any]:
        kind, at = index_entry(job) or ("", None)
        return [str(job.id), kind, at.timestamp() if at else ""]

    def _result_arguments(self, result: TaskResult, job: Job) -> list[Any]:
        backend = self.backend
        if self._extended:
            meta = backend._get_result_meta(
                result.summarize(job), states.SUCCESS, None, result.request
            )
        else:  # what _get_result_meta gives for a step task, without its lookups
            meta = {
                "status": states.SUCCESS,
                "result": result.summarize(job),
                "traceback": None,
                "children": [],
                "date_done": datetime.now(UTC).isoformat(),
            }
        meta["task_id"] = result.task_id
        return [backend.encode(meta), backend.expires or ""]

    def create(self, job: Job) -> None:
        encoded, ttl = self._encode(job)
        keys = [self._key(str(job.id)), INDEX_KEYS[SCHEDULED], INDEX_KEYS[ACTIVE]]
        if not self._create(keys=keys, args=[encoded, ttl or "", *self._index_arguments(job)]):
            raise _duplicate(job)
        self._digests.remember(job, _digest(encoded))

    def get(self, job_id: str) -> Job | None:
        raw = self.client.get(self._key(job_id))
        return None if raw is None else self._decode(raw)

    def update(
        self,
        job_id: str,
        change: Change,
        *,
        assume: Job | None = None,
        result: TaskResult | None = None,
    ) -> Job | None:
        keys = [self._key(job_id), INDEX_KEYS[SCHEDULED], INDEX_KEYS[ACTIVE]]
        if result is not None:
            keys.append(self._key(result.task_id))
        # `raw` is what was read (or sent back by a failed compare); None while only assuming.
        raw: bytes | None = None if assume is not None else self.client.get(keys[0])
        stored = assume
        while True:
            if raw is not None:
                stored = self._decode(raw)
            if stored is None:
                return None
            new = change(stored)
            if new is None:
                if raw is None:  # the assumption may be wrong: look before giving up
                    raw = self.client.get(keys[0])
                    stored = None
                    continue
                return None
            new = stamped(new)
            encoded, ttl = self._encode(new)
            if raw is not None:
                expected = _digest(raw)
            else:
                expected = self._digests.of(stored) or _digest(self._encode(stored, check=False)[0])
            arguments = [
                expected,
                encoded,
                ttl or "",
                *self._index_arguments(new),
                "1" if new.is_final else "",
            ]
            if result is not None:
                arguments += self._result_arguments(result, new)
            reply = self._compare_and_set(keys=keys, args=arguments)
            if reply == 1:
                self._digests.remember(new, _digest(encoded))
                return new
            if reply is None:
                return None
            raw = reply

    def wait_final(self, job_id: str, timeout: float | None, poll_interval: float) -> Job | None:
        # Final records are published on their key: subscribe first, then read, so that an
        # ending between the two is not missed. A re-read every few seconds covers anything
        # a subscription could lose (a reconnect).
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._key(job_id))
            while True:
                job = self.get(job_id)
                if job is None or job.is_final:
                    return job
                remaining = 5.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return job
                pubsub.get_message(timeout=min(remaining, 5.0))
        finally:
            pubsub.close()

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
