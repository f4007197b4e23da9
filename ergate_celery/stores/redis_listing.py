"""The Redis store's listing index for `list_jobs`: sorted sets of job ids scored by
submission time (all jobs, one per status, per workflow, per tag), paged newest first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ergate_celery.model.job import Job
from ergate_celery.stores.listing import JobQuery, Position
from ergate_celery.stores.redis_keys import score_of, text_of, time_of

if TYPE_CHECKING:
    from ergate_celery.stores.redis import RedisJobStore


def _driving_key(store: RedisJobStore, query: JobQuery) -> bytes:
    # The narrowest set the index has for the query; the other filters are checked on the
    # records read.
    if query.statuses is not None and len(query.statuses) == 1:
        return store._status_keys[next(iter(query.statuses))]
    if query.tags:
        key, value = sorted(query.tags.items())[0]
        return store._tag_key(key, value)
    if query.workflow is not None:
        return store._workflow_key(query.workflow)
    return store.listing_key


def listed(
    store: RedisJobStore, query: JobQuery, after: Position | None, count: int
) -> list[tuple[Position, Job | None]]:
    """One page of `list_jobs`: the entries after `after` in the narrowest set the index has
    for the query, newest first, with their records (None for one gone since)."""
    key = _driving_key(store, query)
    top: Any = "+inf" if query.until is None else score_of(query.until)
    if after is not None:
        top = score_of(after.at) if top == "+inf" else min(top, score_of(after.at))
    bottom: Any = "-inf" if query.since is None else score_of(query.since)
    entries: list[Position] = []
    offset = 0
    while len(entries) < count:
        # Entries with the cursor's own time come in descending id order: skip up to it.
        found = store.client.zrevrangebyscore(
            key, top, bottom, start=offset, num=count, withscores=True
        )
        offset += len(found)
        for member, score in found:
            position = Position(time_of(score), text_of(member))
            if after is None or position.before(after):
                entries.append(position)
        if len(found) < count:
            break
    entries = entries[:count]
    if not entries:
        return []
    raws = store.client.mget([store._key(entry.job_id) for entry in entries])
    listed: list[tuple[Position, Job | None]] = []
    gone = []
    for entry, raw in zip(entries, raws, strict=True):
        job = None if raw is None else store._stored(raw).job
        if job is None:
            gone.append(entry.job_id)
        listed.append((entry, job))
    if gone:  # expired or deleted: trim the entries the records left behind
        store.client.zrem(key, *gone)
    return listed
