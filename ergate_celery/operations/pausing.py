"""`pause_workflow` and `resume_workflow`: the paused set lives in the store, shared by every
process; resuming publishes the jobs parked while the workflow was paused."""

from __future__ import annotations

import logging
import time

from ergate_celery.lifecycle.events import Unpark
from ergate_celery.model.job_status import JobStatus
from ergate_celery.operations.listing import every_job
from ergate_celery.stores.listing import JobQuery
from ergate_celery.worker import observing
from ergate_celery.worker.concurrency import publish_when_committed
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)

#: The `sender` of the announcements of `resume_workflow`.
RESUME_SENDER = "ergate.resume_workflow"


def pause_workflow(rt: Runtime, workflow_name: str) -> bool:
    """Pause `workflow_name` for every process; whether it was running before."""
    changed = rt.store.set_paused(workflow_name, True)
    if rt.paused is not None:
        rt.paused.forget()
    logger.info("Workflow %s paused", workflow_name)
    return changed


def resume_workflow(rt: Runtime, workflow_name: str) -> int:
    """Resume `workflow_name` and publish its parked jobs; how many were published.

    Workers trust their copy of the paused set for `ergate_pause_refresh` seconds, so a
    worker may park a job just after the resume: the parked jobs are looked for again once
    that time has passed.
    """
    rt.store.set_paused(workflow_name, False)
    if rt.paused is not None:
        rt.paused.forget()
    published = _publish_parked(rt, workflow_name)
    time.sleep(rt.settings.pause_refresh)
    published += _publish_parked(rt, workflow_name)
    logger.info("Workflow %s resumed; %d parked jobs published", workflow_name, published)
    return published


def _publish_parked(rt: Runtime, workflow_name: str) -> int:
    query = JobQuery(statuses=frozenset({JobStatus.QUEUED}), workflow=workflow_name)
    published = 0
    for job in list(every_job(rt, query)):
        if not job.parked:
            continue
        with observing.operating(RESUME_SENDER, str(job.id)):
            after = rt.apply(str(job.id), Unpark(), sender=RESUME_SENDER).after
            if after is not None:
                publish_when_committed(rt, after, RESUME_SENDER)
                published += 1
    return published
