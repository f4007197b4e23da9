"""The transitions of flow control: waiting for a concurrency slot, getting one, and the
sweep's look at a job that is parked (see `events.WaitForSlot`, `SlotGranted`,
`ParkedChecked`). `transitions.transition` hands these events here."""

from __future__ import annotations

from ergate_celery.lifecycle import events
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus


def wait_for_slot(stored: Job, event: events.WaitForSlot) -> Job | None:
    """The job waits for a slot, if it is still QUEUED at the message's step, unparked."""
    at_step = stored.current_step_name in (None, event.step_name)
    if stored.status is not JobStatus.QUEUED or stored.parked or not at_step:
        return None
    if stored.steps_completed != event.steps_completed:
        return None
    return stored.model_copy(update={"parked": True, "waiting_for_slot": True})


def slot_granted(stored: Job) -> Job | None:
    """A job waiting for a slot is unparked (its step is then published); else unchanged."""
    if stored.status is not JobStatus.QUEUED or not stored.waiting_for_slot:
        return None
    return stored.model_copy(update={"parked": False, "waiting_for_slot": False, "queued_by": None})


def parked_checked(stored: Job) -> Job | None:
    """The same job, written again, while it is still parked."""
    if stored.status is not JobStatus.QUEUED or not stored.parked:
        return None
    return stored.model_copy()
