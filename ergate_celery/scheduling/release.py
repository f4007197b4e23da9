"""Releasing due SCHEDULED jobs, the work of `ergate.release_scheduled_jobs`.

Due jobs are found as a range query on the scheduled index; each is claimed by the `Release`
transition (SCHEDULED to QUEUED, marked as queued by this run), so overlapping runs and
several beat processes release a job once. The job's step is then published and the mark
cleared (`Published`). Until then the job stays in the scheduled index, `PUBLISH_GRACE` s
ahead: a run killed between its write and its publish leaves it there, and the next run
after the grace publishes it (as it does for a retry or a signal whose caller died). Entries
whose record is gone or no longer scheduled are removed, so that they never hold up the jobs
behind them.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from ergate_celery.lifecycle.events import Release
from ergate_celery.lifecycle.publishing import awaits_publish
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.operations.queueing import apply_marked, note_published
from ergate_celery.stores.base import SCHEDULED, UNREADABLE, IndexEntry
from ergate_celery.worker import observing
from ergate_celery.worker.fan_out import recount
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)

RELEASE_TASK = "ergate.release_scheduled_jobs"


def release_due_jobs(rt: Runtime, now: datetime | None = None) -> int:
    """Release every SCHEDULED job due at `now`; returns how many this call released."""
    batch = rt.settings.release_batch_size
    released = 0
    while True:
        moment = now or rt.clock()
        entries = rt.store.index_entries(SCHEDULED, moment, batch)
        moved = 0
        for entry in entries:
            outcome = _release_one(rt, entry, moment)
            released += outcome is JobStatus.QUEUED
            moved += outcome is not None
        # Stop when the index had no more, or nothing at its head could move (not due yet).
        if len(entries) < batch or moved == 0:
            return released


def _release_one(rt: Runtime, entry: IndexEntry, now: datetime) -> JobStatus | None:
    """The status the job moved to, JobStatus.SCHEDULED for a dropped entry, None if kept."""
    with observing.operating(RELEASE_TASK, entry.job_id):
        return _release(rt, entry, now)


def _release(rt: Runtime, entry: IndexEntry, now: datetime) -> JobStatus | None:
    try:
        paused = rt.paused.current() if rt.paused is not None else frozenset()
        release = Release(paused, uuid.uuid4().hex)
        before, after = apply_marked(rt, entry.job_id, release, RELEASE_TASK, now)
    except UNREADABLE as exc:
        # A record that is not a job must not hold up every release after it.
        drop_entry(rt, entry, f"its record is not a job ({type(exc).__name__})")
        return JobStatus.SCHEDULED
    except Exception:
        logger.exception("Could not release job %s; the next run tries again", entry.job_id)
        return None
    if after is None:
        if before is not None and before.status is JobStatus.SCHEDULED:
            return None  # not due yet, whatever the index said
        if before is not None and awaits_publish(before):
            grace = before.lease_until
            if grace is not None and grace > rt.clock():
                return None  # a concurrent run queued it and may be publishing it now
            # The run (or retry, or signal) that queued it died before publishing its step.
            logger.warning("Publishing job %s, queued by %s", before.id, before.queued_by)
            _publish(rt, before)
            return JobStatus.QUEUED
        drop_entry(rt, entry, f"it is {'gone' if before is None else before.status.name}")
        return JobStatus.SCHEDULED
    if after.status is JobStatus.QUEUED and not after.parked:  # parked: its workflow is paused
        _publish(rt, after)
    elif after.status is JobStatus.SCHEDULED:  # a fan-out's next count of its children
        recount(rt, after)
    return after.status


def _publish(rt: Runtime, job: Job) -> None:
    if rt.publish_current_step(job, RELEASE_TASK) is None:
        note_published(rt, job, RELEASE_TASK)


def drop_entry(rt: Runtime, entry: IndexEntry, why: str) -> None:
    """Remove an index entry whose record is gone or no longer matches it, saying why (an
    entry a concurrent write has just moved is kept)."""
    if rt.store.drop_index_entry(entry):
        logger.warning("Dropped the %s index entry of %s: %s", entry.kind, entry.job_id, why)
