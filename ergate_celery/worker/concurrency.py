"""Concurrency slots at work: a job takes a slot of its key before its first step runs, or
waits parked; the slot is freed when the job is final, and the oldest waiting job of the
key is started. The store decides who holds a slot (`stores/flow.py`); this module does what
follows from its answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ergate_celery.lifecycle.events import SlotGranted, WaitForSlot
from ergate_celery.model.concurrency import slot_name
from ergate_celery.model.job import Job
from ergate_celery.transactions import in_django_transaction, on_commit

if TYPE_CHECKING:
    from ergate_celery.model.workflow_step import WorkflowStep
    from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)

#: The `sender` of the announcements of a job started because a slot was freed.
SLOT_SENDER = "ergate.concurrency"


def needs_slot(step: WorkflowStep[Any, Any], message: Job) -> bool:
    """Whether the claim of this message must first hold a slot: the job's workflow limits
    concurrency and the job has not started yet, or was retried since it ended (a job in
    progress holds its slot until it is final)."""
    if step.workflow.concurrency is None or message.concurrency_key is None:
        return False
    return message.started_at is None or message.retries > 0


def admitted(rt: Runtime, step: WorkflowStep[Any, Any], message: Job) -> bool:
    """Whether the job holds a slot of its key (taken now if one is free); if not, it waits
    parked, without a message, and starts when a slot of its key is freed."""
    concurrency = step.workflow.concurrency
    key = message.concurrency_key
    assert concurrency is not None
    assert key is not None
    name = slot_name(message.workflow_name, key)
    job_id = str(message.id)
    submitted = (message.submitted_at or rt.clock()).isoformat()
    store = rt.store
    if rt.retrying(
        f"taking a slot of {name!r} for job {job_id}",
        lambda: store.take_slot(name, job_id, submitted, concurrency.limit),
    ):
        return True
    event = WaitForSlot(step.name, message.steps_completed)
    stored, parked = rt.retrying(
        f"parking job {job_id} for a slot of {name!r}",
        lambda: rt.apply(job_id, event, sender=step.task_name, assume=message),
    )
    if parked is None:
        # Not parked here: another copy of the message parked it and looks again itself, or
        # the job moved on. Cancelled before the take, its cancel found nothing to free, and
        # the take then put it in line: the park, after the take, sees the cancel.
        if stored is not None and stored.is_final and stored.concurrency_key is not None:
            free_slot(rt, stored)
        return False
    logger.info(
        "Job %s waits for a slot: %d jobs of key %r of %s are in progress",
        job_id,
        concurrency.limit,
        key,
        message.workflow_name,
    )
    # A slot freed between the take and the park was handed to this job while it was not
    # parked yet, so nobody started it: look again.
    if store.take_slot(name, job_id, submitted, concurrency.limit):
        start(rt, job_id, step.task_name)
        return False
    # A cancel between the park and this take freed the job's place, then the take put it
    # back in line: this read, after the take, sees the cancel (a cancel after the take
    # frees the place itself).
    ended = rt.store.get(job_id)
    if ended is not None and ended.is_final and ended.concurrency_key is not None:
        free_slot(rt, ended)
    return False


def start(rt: Runtime, job_id: str, sender: str) -> None:
    """Publish the step of a job that was given a slot while it waited (once: the
    `SlotGranted` write decides who publishes)."""
    before, granted = rt.apply(job_id, SlotGranted(), sender=sender)
    if granted is not None:
        publish_when_committed(rt, granted, sender)
    elif before is not None and before.is_final and before.concurrency_key is not None:
        free_slot(rt, before)  # it ended while it waited: the slot goes to the next one


def publish_when_committed(rt: Runtime, job: Job, sender: str) -> None:
    """Publish the job's step once a worker can read its write: at once, or when the
    caller's Django transaction commits if the store's writes joined it (a job given the slot
    of one cancelled inside `atomic()`, say; a rollback undoes the write and publishes
    nothing)."""
    if not (rt.store.joins_django_transaction and in_django_transaction()):
        rt.publish_current_step(job, sender)
        return

    def publish() -> None:
        try:
            rt.publish_current_step(job, sender)
        except Exception:
            # After the commit nobody is left to raise to (a step that cannot be published
            # failed its job).
            logger.exception("Publishing job %s after its transaction committed failed", job.id)

    on_commit(publish)


def free_slot(rt: Runtime, job: Job) -> None:
    """`job` is final: free its slot and start the jobs that take the freed slots.

    A failure here is logged, not raised (the job's own change is stored): the sweep frees
    the slots of final jobs when it looks at the jobs waiting behind them.
    """
    assert job.concurrency_key is not None
    name = slot_name(job.workflow_name, job.concurrency_key)
    try:
        for waiting in rt.store.free_slot(name, str(job.id)):
            start(rt, waiting, SLOT_SENDER)
    except Exception:
        logger.exception(
            "Could not free the slot of job %s under %r; the sweep frees it", job.id, name
        )


def check_slots(rt: Runtime, waiting: Job) -> bool:
    """The sweep found `waiting` parked for a slot: free the slots of holders that are final
    or gone (a process that ended them died before freeing), and start the jobs that hold a
    slot but were never started; whether `waiting` was started."""
    assert waiting.concurrency_key is not None
    name = slot_name(waiting.workflow_name, waiting.concurrency_key)
    store = rt.store
    for holder in store.slots(name).holding:
        job = store.get(holder)
        if job is None or job.is_final:
            for promoted in store.free_slot(name, holder):
                start(rt, promoted, SLOT_SENDER)
        elif job.waiting_for_slot:
            start(rt, holder, SLOT_SENDER)
    job_id = str(waiting.id)
    if job_id in store.slots(name).holding:
        start(rt, job_id, SLOT_SENDER)
        return True
    return False
