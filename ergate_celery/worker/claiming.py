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


class ClaimApplied:
    """Stores `claim` on the job of `message` (as `Runtime.apply`), called once per try of
    `Runtime.retrying`; a `short` message (its run, not its record) is claimed in one round
    trip where the store can, else against the record read at the first try.

    A later try (the earlier one's reply was lost) goes through `Runtime.apply`, which tells
    a write that went through by its token: against the record read at the first try, or
    the message itself when the first try read nothing."""

    def __init__(
        self, rt: Runtime, claim: Claim, now: datetime, message: Job, *, short: bool
    ) -> None:
        self.rt, self.claim, self.now, self.message = rt, claim, now, message
        self.short = short

    def __call__(self, *, sender: str, task: Any) -> Updated:
        rt, message = self.rt, self.message
        job_id = str(message.id)
        if self.short:
            self.short = False  # the first try only
            store = rt.store
            found = None
            if isinstance(store, BaseJobStore):
                found = store.claim_in_one(job_id, self.claim, self.now)
            if found is None:
                stored = store.get(job_id)
                if stored is not None and _same_run(stored, message):
                    self.message = message = stored  # the claim's guess of the record
            elif found.after is not None:
                rt.announce(found.before, found.after, sender, task)
                return Updated(found.before, found.after)
            elif found.before is None:
                return Updated(None, None)
            else:
                self.message = message = found.before  # as stored: the transition decides
        return rt.apply(job_id, self.claim, sender=sender, now=self.now, assume=message, task=task)


def _same_run(stored: Job, message: Job) -> bool:
    return (
        stored.workflow_name == message.workflow_name
        and stored.steps_completed == message.steps_completed
    )
