"""The stuck-job sweep, the work of `ergate.recover_stuck_jobs`.

A job idle in QUEUED, RUNNING or CANCELLING past `ergate_stuck_after` lost its message or its
worker. The `Recover` transition requeues it (counted as a start of its step, so no job is
requeued forever) or fails it; index entries whose record is gone or final are removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache

from ergate_celery.lifecycle.events import Recover
from ergate_celery.model.job_status import ACTIVE_STATUSES, JobStatus
from ergate_celery.scheduling.parked import look_at_parked
from ergate_celery.scheduling.release import drop_entry
from ergate_celery.stores.base import ACTIVE, UNREADABLE, IndexEntry
from ergate_celery.worker import observing
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)

RECOVER_TASK = "ergate.recover_stuck_jobs"
_BATCH = 1000


def recover_stuck_jobs(rt: Runtime, now: datetime | None = None) -> int:
    """Requeue or fail every job idle past `stuck_after`; returns how many it changed."""
    settings = rt.settings
    moment = now or rt.clock()
    before = moment - timedelta(seconds=settings.stuck_after)
    entries = rt.store.index_entries(ACTIVE, before, _BATCH)
    paused = cache(rt.store.paused_workflows)
    return sum(_recover(rt, entry, moment, paused) for entry in entries)


def _recover(rt: Runtime, entry: IndexEntry, now: datetime, paused: Callable[[], set[str]]) -> int:
    try:
        seen = rt.store.get(entry.job_id)
    except UNREADABLE as exc:
        drop_entry(rt, entry, f"its record is not a job ({type(exc).__name__})")
        return 0
    if seen is None or seen.status not in ACTIVE_STATUSES:
        drop_entry(rt, entry, f"it is {'gone' if seen is None else seen.status.name}")
        return 0
    if seen.parked and seen.status is JobStatus.QUEUED:
        try:
            return look_at_parked(rt, seen, paused, RECOVER_TASK, now)
        except Exception:
            logger.exception("Could not look at parked job %s; the next sweep does", seen.id)
            return 0
    settings = rt.settings
    idle = (now - entry.at).total_seconds()
    event = Recover(
        seen, settings.stuck_action, idle, settings.max_step_attempts, settings.stuck_after
    )
    with observing.operating(RECOVER_TASK, entry.job_id):
        return _apply(rt, entry.job_id, event, now)


def _apply(rt: Runtime, job_id: str, event: Recover, now: datetime) -> int:
    seen = event.seen
    try:
        recovered = rt.apply(job_id, event, sender=RECOVER_TASK, now=now).after
        if recovered is None:
            return 0
        logger.warning("Stuck job %s: %s", seen.id, recovered.recoveries[-1])
        if recovered.status is JobStatus.QUEUED:
            rt.publish_current_step(recovered, RECOVER_TASK)
    except Exception:
        logger.exception("Could not recover stuck job %s; the next sweep tries again", seen.id)
        return 0
    return 1
