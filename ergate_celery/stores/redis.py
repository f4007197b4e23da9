"""Job records on the Redis result backend: one key per job, changed by Lua compare-and-set."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import states
from celery.backends.base import KeyValueStoreBackend

from ergate_celery.lifecycle.events import Claim
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.stores.base import (
    ACTIVE,
    SCHEDULED,
    BaseJobStore,
    ClaimedInOne,
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
from ergate_celery.stores.redis_claim import before_claim, claim_arguments
from ergate_celery.stores.redis_keys import (
    Digests,
    app_keys,
    digest_of,
    score_of,
    text_of,
    time_of,
)
from ergate_celery.stores.redis_listing import listed
from ergate_celery.stores.redis_publish import message_for
from ergate_celery.stores.redis_scripts import (
    CLAIM,
    COMPARE_AND_SET,
    CREATE,
    CREATE_UNLESS_PAUSED,
    DROP_INDEX_ENTRY,
    PAUSED,
    STORED_PARKED,
    SWAP_SLOTS,
)

#: The listing's status sets a claim moves a job between.
_CLAIMED_FROM_TO = (JobStatus.QUEUED, JobStatus.RUNNING)


class RedisJobStore(BaseJobStore[str]):
    """Stores each job at the key Celery uses for a task result of the same id; its token is
    the SHA-1 of the stored bytes."""

    writes_task_result = True

    def __init__(
        self,
        backend: Any,
        max_bytes: int,
        expires_by_status: Mapping[str, int] | None = None,
        index_name: str = "",
    ) -> None:
        super().__init__(backend, max_bytes, expires_by_status)
        self._compare_and_set_script = backend.client.register_script(COMPARE_AND_SET)
        self._create = backend.client.register_script(CREATE)
        self._drop_index_entry = backend.client.register_script(DROP_INDEX_ENTRY)
        self._swap_slots_script = backend.client.register_script(SWAP_SLOTS)
        self._create_unless_paused = backend.client.register_script(CREATE_UNLESS_PAUSED)
        self._claim = backend.client.register_script(CLAIM)
        self._digests = Digests()
        self._json = backend.serializer == "json"
        self._extended = bool(backend.app.conf.find_value_for_key("extended", "result"))
        # What Celery put before its own task keys (`global_keyprefix` and its separator).
        prefix = backend.task_keyprefix.removesuffix(
            backend.key_t(KeyValueStoreBackend.task_keyprefix)
        )
        keys = {name: prefix + key.encode() for name, key in app_keys(index_name).items()}
        self.index_keys: dict[str, bytes] = {kind: keys[kind] for kind in (SCHEDULED, ACTIVE)}
        self.listing_key: bytes = keys["jobs"]
        self.paused_key: bytes = keys["paused"]
        self.slots_prefix: bytes = keys["slots"]
        self._status_prefix = self._listing("status:")
        self._status_keys = {
            status: self._status_prefix + status.name.encode() for status in JobStatus
        }

    @property
    def client(self) -> Any:
        return self.backend.client

    def _key(self, job_id: str) -> bytes:
        key: bytes = self.backend.get_key_for_task(job_id)
        return key

    def _encode(
        self, job: Job, *, check: bool = True, limit: int | None = None
    ) -> tuple[bytes, int | None]:
        now = datetime.now(UTC)
        traceback = job.error.traceback if job.error else None
        date_done = now.isoformat() if job.is_final else None
        if self._json:
            # The meta document Celery would write, with the job serialized by pydantic
            # straight to JSON: one pass instead of a dump to Python objects and an encode.
            encoded = (
                f'{{"status": "{job.status.name}", "result": {job.model_dump_json()}, '
                f'"traceback": {json.dumps(traceback)}, "children": [], '
                f'"date_done": {json.dumps(date_done)}, "task_id": {json.dumps(str(job.id))}}}'
            ).encode()
        else:
            encoded = self.backend.encode(job_meta(job, now))
        if check:
            check_size(job, encoded, limit or self.max_bytes)
        # Celery would put result_expires on every write; here only where the rule says.
        kept = self.expires_after(job)
        return encoded, math.ceil(kept) if kept else None

    def _stored(self, raw: bytes) -> Stored[str]:
        return Stored(job_from_document(self.backend.decode(raw)["result"]), digest_of(raw))

    def _index_arguments(self, job: Job) -> list[Any]:
        entry = index_entry(job, now=self.clock())
        return (
            [str(job.id), "", ""]
            if entry is None
            else [entry.job_id, entry.kind, score_of(entry.at)]
        )

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

    def _server_time(self) -> datetime | None:
        seconds, microseconds = self.client.time()
        return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=microseconds)

    def _read(self, job_id: str) -> Stored[str] | None:
        raw = self.client.get(self._key(job_id))
        return None if raw is None else self._stored(raw)

    def get_many(self, job_ids: list[str]) -> list[Job | None]:
        """The stored jobs of `job_ids`, in order (None for a gone one): one MGET."""
        raws = self.client.mget([self._key(job_id) for job_id in job_ids]) if job_ids else []
        return [None if raw is None else self._stored(raw).job for raw in raws]

    def _token_of(self, job: Job) -> str:
        # A record this process wrote last is known by its digest, without encoding it again.
        return self._digests.of(job) or digest_of(self._encode(job, check=False)[0])

    def _compare_and_set(
        self,
        job_id: str,
        expected: str,
        new: Job,
        result: TaskResult | None,
        limit: int | None = None,
    ) -> Stored[str] | Outcome:
        keys = [self._key(job_id), self.index_keys[SCHEDULED], self.index_keys[ACTIVE]]
        encoded, ttl = self._encode(new, limit=limit)
        arguments = [
            expected,
            encoded,
            ttl or "",
            *self._index_arguments(new),
            "1" if new.is_final else "",
        ]
        if result is not None:
            keys.append(self._key(result.task_id))
            arguments += self._result_arguments(result, new)
        else:
            arguments += ["", ""]
        arguments.append(message_for(new))  # the next step's message, if one goes with it
        arguments += self._status_move(new)
        reply = self._compare_and_set_script(keys=keys, args=arguments)
        if reply == 1:
            self._digests.remember(new, digest_of(encoded))
            return Outcome.WRITTEN
        # On a mismatch the script sent the record back: no second read.
        return Outcome.GONE if reply is None else self._stored(reply)

    def claim_in_one(self, job_id: str, claim: Claim, now: datetime) -> ClaimedInOne | None:
        if not self._json:
            return None  # the script edits the JSON text of the record
        keys = [self._key(job_id), self.index_keys[SCHEDULED], self.index_keys[ACTIVE]]
        keys += [self.listing_key, *(self._status_keys[s] for s in _CLAIMED_FROM_TO)]
        arguments = claim_arguments(job_id, claim, now, score_of(self.clock()))
        reply = self._claim(keys=keys, args=arguments)
        if not reply:
            return ClaimedInOne(None, None)
        stored = self._stored(reply[1])
        # Known by its digest: the transition or outcome written next compares against it.
        self._digests.remember(*stored)
        if reply[0] == 0:
            return ClaimedInOne(stored.job, None)
        return ClaimedInOne(before_claim(stored.job, reply[2:]), stored.job)

    def _insert(self, job: Job) -> bool:
        encoded, keys, arguments = self._creation(job)
        if not self._create(keys=keys, args=arguments):
            return False
        self._digests.remember(job, digest_of(encoded))
        return True

    def _creation(self, job: Job) -> tuple[bytes, list[Any], list[Any]]:
        encoded, ttl = self._encode(job, limit=self.create_limit)
        keys = [self._key(str(job.id)), self.index_keys[SCHEDULED], self.index_keys[ACTIVE]]
        arguments = [encoded, ttl or "", *self._index_arguments(job), *self._listing_adds(job)]
        return encoded, keys, arguments

    def create_many(self, jobs: list[Job]) -> list[bool]:
        """Store each of `jobs` unless its id is taken, in one round trip (a pipeline of the
        create script); whether each was stored."""
        with self.client.pipeline(transaction=False) as pipe:
            for job in jobs:
                _, keys, arguments = self._creation(job)
                self._create(keys=keys, args=arguments, client=pipe)
            replies = pipe.execute()
        return [bool(reply) for reply in replies]

    def _insert_unless_paused(self, job: Job) -> Job | None:
        # The paused check and the create in one script: no extra round trip for pausing. The
        # parked variant of the record is encoded only when the script finds the workflow
        # paused (it then writes nothing): a second round trip, with both variants, for a
        # paused workflow only.
        encoded, ttl = self._encode(job, limit=self.create_limit)
        keys = [self._key(str(job.id)), self.index_keys[SCHEDULED], self.index_keys[ACTIVE]]
        keys.append(self.paused_key)
        arguments = [job.workflow_name, "", encoded, ttl or ""]
        arguments += [*self._index_arguments(job), message_for(job), *self._listing_adds(job)]
        reply = self._create_unless_paused(keys=keys, args=arguments)
        stored, raw = job, encoded
        if reply == PAUSED:
            parked = job.model_copy(update={"parked": True})
            parked_encoded, _ = self._encode(parked, limit=self.create_limit)
            arguments[1] = parked_encoded
            reply = self._create_unless_paused(keys=keys, args=arguments)
            if reply == STORED_PARKED:  # still paused (resumed in between: stored as given)
                stored, raw = parked, parked_encoded
        if not reply:
            return None
        self._digests.remember(stored, digest_of(raw))
        return stored

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
            for key in self.index_keys.values():
                pipe.zrem(key, job_id)
            pipe.execute()

    def index_entries(self, kind: str, until: datetime, limit: int) -> list[IndexEntry]:
        found = self.client.zrangebyscore(
            self.index_keys[kind], "-inf", score_of(until), 0, limit, withscores=True
        )
        return [IndexEntry(kind, text_of(member), time_of(score)) for member, score in found]

    def drop_index_entry(self, entry: IndexEntry) -> bool:
        keys = [self.index_keys[entry.kind]]
        return bool(self._drop_index_entry(keys=keys, args=[entry.job_id, score_of(entry.at)]))

    # The listing index.

    def _listing(self, suffix: str) -> bytes:
        return self.listing_key + b":" + suffix.encode()

    def _tag_key(self, key: str, value: str) -> bytes:
        return self._listing("tag:" + json.dumps([key, value]))

    def _workflow_key(self, workflow_name: str) -> bytes:
        return self._listing(f"workflow:{workflow_name}")

    def _status_move(self, job: Job) -> list[Any]:
        # Into the set of its status, out of the old one: a job is in one status set at a
        # time. Only records this store cannot read the old status from (not its JSON) need
        # the list of every other set.
        if job.submitted_at is None:
            return [""]
        others = (
            []
            if self._json
            else [key for status, key in self._status_keys.items() if status is not job.status]
        )
        return [
            score_of(job.submitted_at),
            self._status_keys[job.status],
            self._status_prefix,
            job.status.name,
            *others,
        ]

    def _listing_adds(self, job: Job) -> list[Any]:
        if job.submitted_at is None:
            return [""]
        keys = [
            self.listing_key,
            self._status_keys[job.status],
            self._workflow_key(job.workflow_name),
        ]
        keys += [self._tag_key(key, value) for key, value in sorted(job.tags.items())]
        return [score_of(job.submitted_at), *keys]

    def _listed(
        self, query: JobQuery, after: Position | None, count: int
    ) -> list[tuple[Position, Job | None]]:
        return listed(self, query, after, count)

    # Paused workflows.

    def paused_workflows(self) -> set[str]:
        return {text_of(name) for name in self.client.smembers(self.paused_key)}

    def set_paused(self, workflow_name: str, paused: bool) -> bool:
        if paused:
            return bool(self.client.sadd(self.paused_key, workflow_name))
        return bool(self.client.srem(self.paused_key, workflow_name))

    # Concurrency slots.

    def _read_slots(self, name: str) -> bytes | None:
        raw: bytes | None = self.client.get(self.slots_prefix + name.encode())
        return raw

    def _swap_slots(self, name: str, expected: str | bytes | None, new: str | None) -> bool:
        keys = [self.slots_prefix + name.encode()]
        reply = self._swap_slots_script(keys=keys, args=[expected or "", new or ""])
        return bool(reply)
