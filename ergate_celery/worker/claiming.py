"""A short step message's claim in one round trip, where the store has one (`claim_in_one`):
the store claims the common case itself and otherwise hands back the record as stored, which
the lifecycle's transition then runs on without reading it again. Elsewhere the record is read
first, and the transition's compare-and-set assumes it."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from ergate_celery.lifecycle.events import Claim
from ergate_celery.model.job import Job
from ergate_celery.model.workflow_step import WorkflowStep
from ergate_celery.stores.base import BaseJobStore, Updated
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)


def claims_in_one(rt: Runtime, step: WorkflowStep[Any, Any]) -> bool:
    """Whether a short message's claim may skip the read before it: the claim needs nothing
    of the record (a paused workflow parks the job, a concurrency limit reads its key)."""
    paused = rt.paused is not None and rt.paused.holds(step.workflow.unique_name)
    return step.workflow.concurrency is None and not paused


def claim_applied(
    rt: Runtime,
    claim: Claim,
    now: datetime,
    message: Job,
    *,
    sender: str,
    task: Any,
    short: bool,
) -> Updated:
    """Store `claim` on the job of `message` (as `Runtime.apply`); a `short` message (its run,
    not its record) is claimed in one round trip where the store can."""
    job_id = str(message.id)
    if short:
        store = rt.store
        found = store.claim_in_one(job_id, claim, now) if isinstance(store, BaseJobStore) else None
        if found is None:
            stored = store.get(job_id)
            if stored is not None and _same_run(stored, message):
                message = stored  # the claim's guess of the record
        elif found.after is not None:
            rt.announce(found.before, found.after, sender, task)
            return Updated(found.before, found.after)
        elif found.before is None:
            return Updated(None, None)
        else:
            message = found.before  # as stored: the transition decides on it
    return rt.apply(job_id, claim, sender=sender, now=now, assume=message, task=task)


def _same_run(stored: Job, message: Job) -> bool:
    return (
        stored.workflow_name == message.workflow_name
        and stored.steps_completed == message.steps_completed
    )
