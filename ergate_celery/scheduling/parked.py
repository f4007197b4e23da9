"""The sweep's look at parked jobs (QUEUED without a message), so that none is left behind.

A job parked by a pause waits for `resume_workflow`; one that waits for a concurrency slot
waits for a job of its key to end. If the resume's caller died half-way, or the process that
ended a job died before freeing its slot, nothing would start them: the sweep, finding them
idle past `ergate_stuck_after`, publishes those of a workflow no longer paused, frees the
slots of ended jobs, and dates the others anew (`ParkedChecked`) to look again later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from ergate_celery.lifecycle.events import ParkedChecked, Unpark
from ergate_celery.model.job import Job
from ergate_celery.worker.concurrency import check_slots
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)


def look_at_parked(
    rt: Runtime, job: Job, paused: Callable[[], set[str]], sender: str, now: datetime
) -> int:
    """Start `job` if nothing holds it any more (1), else date it anew (0). `paused` gives
    the paused workflows as stored (read once per sweep)."""
    job_id = str(job.id)
    if job.waiting_for_slot:
        if check_slots(rt, job):
            logger.warning("Job %s waited for a slot that was free; started", job_id)
            return 1
    elif job.workflow_name not in paused():
        unparked = rt.apply(job_id, Unpark(), sender=sender, now=now).after
        if unparked is not None:
            logger.warning(
                "Job %s was parked though %s is not paused (a resume did not finish); published",
                job_id,
                job.workflow_name,
            )
            rt.publish_current_step(unparked, sender)
            return 1
    rt.apply(job_id, ParkedChecked(), sender=sender, now=now)
    return 0
