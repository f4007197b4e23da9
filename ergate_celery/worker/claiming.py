"""The write of a step's claim: in one round trip where the store offers one (`claim_in_one`:
no read of the record first), else the record read and then compared-and-set. The one-trip
claim is announced as `Runtime.apply` announces a claim; a record its common case did not
cover goes through the claim's transition, the round trip's reply serving as the read."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from ergate_celery.lifecycle.events import Claim
from ergate_celery.lifecycle.transitions import already_written, transition
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.stores.base import BaseJobStore, Updated
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)


def claimed(
    rt: Runtime, claim: Claim, message: Job, *, in_one: bool, now: datetime, sender: str, task: Any
) -> tuple[Updated, Job]:
    """The claim of `message`'s run written (`in_one`: tried in one round trip), and the run
    as known after it: the record, when it is still at the message's run."""
    job_id = str(message.id)
    what = f"claiming {claim.step_name!r} of job {job_id}"
    updated = None
    if in_one:
        updated = rt.retrying(
            what, lambda: claim_in_one(rt, job_id, claim, now=now, sender=sender, task=task)
        )
        if updated is None:  # the store has no such claim: read, as a long message would
            message = stored_run(rt, message)
        elif updated.before is not None and same_run(updated.before, message):
            message = updated.before
    if updated is None:
        updated = rt.retrying(
            what,
            lambda: rt.apply(job_id, claim, sender=sender, now=now, assume=message, task=task),
        )
    return updated, message


def claim_in_one(
    rt: Runtime, job_id: str, claim: Claim, *, now: datetime, sender: str, task: Any
) -> Updated | None:
    """The claim as `rt.apply(job_id, claim, ...)` stores and announces it, with the record's
    read and, in the store's common case, its write in one round trip; None: the store has no
    such claim (nothing was done)."""
    store = rt.store
    found = store.claim_in_one(job_id, claim, now) if isinstance(store, BaseJobStore) else None
    if found is None:
        return None
    before, after = found.before, found.after
    if after is None:
        if before is None:
            return Updated(None, None)
        if already_written(before, claim):
            # This run's own claim, whose reply was lost: tried again, it is announced now.
            before, after = _unclaimed(before), before
        elif transition(before, claim, now) is None:
            return Updated(before, None)
        else:  # the claim's other cases (a lost run, a cancel, a deadline), read already
            return rt.apply(job_id, claim, sender=sender, now=now, assume=before, task=task)
    rt.announce(before, after, sender, task)
    return Updated(before, after)


def stored_run(rt: Runtime, message: Job) -> Job:
    """The job as stored if it is still at the run the message names (the claim's guess of
    the record: right unless a write comes between), else the message's own place."""
    job_id = str(message.id)
    stored = rt.retrying(f"reading job {job_id}", lambda: rt.store.get(job_id))
    if stored is not None and same_run(stored, message):
        return stored
    return message


def same_run(stored: Job | None, message: Job) -> bool:
    """Whether `stored` is at the run `message` names (its workflow, its steps completed)."""
    return (
        stored is not None
        and stored.workflow_name == message.workflow_name
        and stored.steps_completed == message.steps_completed
    )


def _unclaimed(claimed: Job) -> Job:
    """The record as it was before this run's claim (only what announcing it looks at): a
    first claim set `started_at` to the claim's own time."""
    first = claimed.started_at == claimed.step_started_at
    return claimed.model_copy(
        update={
            "status": JobStatus.QUEUED,
            "claim": None,
            "started_at": None if first else claimed.started_at,
        }
    )
