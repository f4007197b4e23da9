"""Stored jobs for the benches that need a full store: written in bulk, as the store writes them.

`fill` writes jobs straight into a store's storage, batch by batch: on Redis one pipeline per
batch (a SET per record, one ZADD per index key for the whole batch), on SQL one multi-row
INSERT per table per batch. Every value comes from the store's own functions (its record
encoding, its keys, its index entries and listing keys), so what is stored is what
`store.create` would have written; only the round trips are fewer, so a million jobs take
about a minute rather than an hour.

`mixed_jobs` makes jobs as a store holds them after a while: mostly finished (completed with
their step timings, failed with their error, some cancelled), some scheduled far ahead, and a
few queued or running.
"""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from ergate_celery.model.job import Job, JobError, StepTiming
from ergate_celery.model.job_status import JobStatus
from ergate_celery.stores.base import ACTIVE, index_entry

from . import apps

#: Jobs written per pipeline or per multi-row INSERT.
BATCH = 2_000

#: Of every 100 jobs: 5 SCHEDULED (a month ahead), 1 QUEUED, 1 RUNNING, 15 FAILED,
#: 2 CANCELLED, the other 76 COMPLETED.
MIX: tuple[tuple[int, JobStatus], ...] = (
    (5, JobStatus.SCHEDULED),
    (1, JobStatus.QUEUED),
    (1, JobStatus.RUNNING),
    (15, JobStatus.FAILED),
    (2, JobStatus.CANCELLED),
    (76, JobStatus.COMPLETED),
)
#: Of every 10 jobs: 7 of the 5-step workflow, 2 of the 20-step one, 1 of the sized one.
WORKFLOWS = (
    (7, apps.SHORT_WORKFLOW, apps.SHORT_STEPS),
    (2, apps.LONG_WORKFLOW, apps.LONG_STEPS),
    (1, apps.SIZED_WORKFLOW, apps.SIZED_STEPS),
)


def _timings(steps: int, at: datetime, outcome_last: str) -> list[StepTiming]:
    return [
        StepTiming(
            step=f"step_{index:02d}",
            index=index,
            started_at=at + timedelta(milliseconds=7 * index),
            finished_at=at + timedelta(milliseconds=7 * index + 3),
            attempt=1,
            outcome=outcome_last if index == steps - 1 else "QUEUED",
        )
        for index in range(steps)
    ]


def template(status: JobStatus, workflow: str, steps: int, at: datetime) -> Job:
    """A job of `workflow` (`steps` steps) as a worker leaves it in `status`, submitted `at`."""
    fields: dict[str, Any] = {}
    # A running or failed job is at its third step, two done.
    at_third_step = {
        "current_step": 2,
        "steps_completed": 2,
        "percent_completed": 200 / steps,
        "started_at": at,
    }
    if status is JobStatus.SCHEDULED:
        fields = {"requested_start_time": at + timedelta(days=30)}
    elif status is JobStatus.RUNNING:
        fields = {
            **at_third_step,
            "step_started_at": at + timedelta(milliseconds=14),
            "current_step_name": "step_02",
            "claim": uuid.uuid4().hex,
            "attempt": 1,
            "timings": _timings(2, at, "RUNNING"),
        }
    elif status is JobStatus.FAILED:
        error = JobError(type="ValueError", message="bad order", step="step_02")
        fields = {
            **at_third_step,
            "finished_at": at + timedelta(milliseconds=21),
            "error": error,
            "errors": [error],
            "timings": _timings(3, at, "FAILED"),
        }
    elif status is JobStatus.CANCELLED:
        fields = {"finished_at": at + timedelta(seconds=1)}
    elif status is JobStatus.COMPLETED:
        fields = {
            "current_step": steps - 1,
            "steps_completed": steps,
            "percent_completed": 100.0,
            "last_return_value": {"order": "A-1", "amount": 17},
            "started_at": at,
            "finished_at": at + timedelta(milliseconds=7 * steps),
            "timings": _timings(steps, at, "COMPLETED"),
        }
    return Job(
        id=str(uuid.uuid4()),
        workflow_name=workflow,
        status=status,
        initial_input_value={"order": "A-1", "amount": 17},
        submitted_at=at,
        tags={"shard": "0"},
        **fields,
    )


def _cycle(weighted: Iterable[tuple[int, Any]]) -> list[Any]:
    return [item for weight, item in weighted for _ in range(weight)]


def mixed_jobs(start: int, stop: int, base: datetime) -> Iterator[Job]:
    """Jobs `start` to `stop - 1` of the mix, submitted one millisecond apart from `base`."""
    statuses = _cycle(MIX)
    workflows = _cycle((weight, (name, steps)) for weight, name, steps in WORKFLOWS)
    templates = {
        (status, name): template(status, name, steps, base)
        for status in set(statuses)
        for name, steps in set(workflows)
    }
    for number in range(start, stop):
        status = statuses[number % len(statuses)]
        name, _ = workflows[(number // 7) % len(workflows)]
        at = base + timedelta(milliseconds=number)
        update: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "submitted_at": at,
            "initial_input_value": {"order": f"A-{number}", "amount": number % 1000},
            "tags": {"shard": str(number % 5)},
        }
        if status is JobStatus.SCHEDULED:
            update["requested_start_time"] = at + timedelta(days=30)
        yield templates[status, name].model_copy(update=update)


def fill(store: Any, jobs: Iterable[Job], *, active_at: datetime | None = None) -> int:
    """Write `jobs` (new ids) into `store` as its `create` would; returns how many.

    `active_at`, when given, is the time of the ACTIVE index entries written (the time of
    the last change the stuck-job sweep compares): a past time makes the jobs stuck.
    """
    written = 0
    iterator = iter(jobs)
    while batch := list(itertools.islice(iterator, BATCH)):
        if hasattr(store, "client"):
            _redis_batch(store, batch, active_at)
        else:
            _sql_batch(store, batch, active_at)
        written += len(batch)
    return written


def _resp(*arguments: bytes) -> bytes:
    """One command in the Redis protocol."""
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        parts += (b"$%d\r\n" % len(argument), argument, b"\r\n")
    return b"".join(parts)


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return (repr(value) if isinstance(value, float) else str(value)).encode()


def _redis_batch(store: Any, jobs: list[Job], active_at: datetime | None) -> None:
    # The writes of the store's CREATE script, with each sorted set's ZADD batched, sent as
    # one packed buffer (redis-py's per-argument packing would take longer than Redis).
    members: dict[bytes, list[bytes]] = defaultdict(list)
    listing_keys: dict[tuple[Any, ...], list[bytes]] = {}
    commands = []
    for job in jobs:
        encoded, ttl = store._encode(job, limit=store.create_limit)
        job_id, kind, score = store._index_arguments(job)
        member = job_id.encode()
        key = store._key(job_id)
        commands.append(
            _resp(b"SET", key, encoded)
            if ttl is None
            else _resp(b"SET", key, encoded, b"EX", b"%d" % ttl)
        )
        if kind:
            at = active_at.timestamp() if kind == ACTIVE and active_at else score
            members[store.index_keys[kind]] += (_bytes(at), member)
        if job.submitted_at is not None:
            # The store's listing keys of the job, worked out once per kind of job.
            kind_of = (job.status, job.workflow_name, *sorted(job.tags.items()))
            if kind_of not in listing_keys:
                listing_keys[kind_of] = store._listing_adds(job)[1:]
            score_bytes = _bytes(job.submitted_at.timestamp())
            for key in listing_keys[kind_of]:
                members[key] += (score_bytes, member)
    commands += [_resp(b"ZADD", key, *scored) for key, scored in members.items()]
    pool = store.client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command([b"".join(commands)])
        for _ in commands:
            connection.read_response()
    except BaseException:
        connection.disconnect()  # replies may still be unread: never reuse it
        raise
    finally:
        pool.release(connection)


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _sql_batch(store: Any, jobs: list[Job], active_at: datetime | None) -> None:
    # The rows of the store's `_insert`: the record, its index entry, its listing and tags.
    import sqlalchemy as sa

    records, index, listed, tags = [], [], [], []
    for job in jobs:
        job_id = str(job.id)
        records.append({"task_id": job_id, **store._values(job, store.create_limit)})
        entry = index_entry(job)
        if entry is not None:
            at = active_at if entry.kind == ACTIVE and active_at else entry.at
            index.append({"job_id": job_id, "kind": entry.kind, "at": _naive(at)})
        if job.submitted_at is not None:
            listed.append(
                {
                    "job_id": job_id,
                    "workflow": job.workflow_name,
                    "status": job.status.name,
                    "submitted_at": _naive(job.submitted_at),
                }
            )
            tags += [{"key": k, "value": v, "job_id": job_id} for k, v in job.tags.items()]
    with store.engine.begin() as conn:
        for table, rows in (
            (store.table, records),
            (store.index, index),
            (store.listing, listed),
            (store.tags, tags),
        ):
            if rows:
                conn.execute(sa.insert(table), rows)
