"""Messages that cannot run — not a job, too large, for a step this worker does not know: the
job they name ends FAILED with the reason if it is theirs (at the step the message was for,
held by no live claim), and the message is dropped.

What is logged says what was wrong and where, never the values: messages may hold personal
data.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import Task
from pydantic import ValidationError

from ergate_celery.lifecycle.events import MessageRejected
from ergate_celery.model.job import Job, JobError
from ergate_celery.model.job_status import JobStatus
from ergate_celery.model.workflow_step import WorkflowStep, step_task_name
from ergate_celery.worker.step_results import reply

if TYPE_CHECKING:
    from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)


def reject_message(
    rt: Runtime, payload: Any, error: JobError, sender: str, steps_completed: int | None = None
) -> str | None:
    """Fail the job a bad message for step task `sender` names, if it may; returns its id.

    A message can harm only its own job: one not final or waiting, at the step `sender` runs
    (of its own workflow), held by no live claim and (when `steps_completed` is given) still
    at that point. Any other is left alone and the message dropped with a WARNING.
    """
    job_id = payload.get("id") if isinstance(payload, dict) else None
    if not isinstance(job_id, str):
        logger.warning("Dropped a message for %s that names no job: %s", sender, error.message)
        return None
    rejected = MessageRejected(error, steps_completed, sender)
    try:
        before, failed = rt.apply(job_id, rejected, sender=sender)
    except Exception:
        logger.exception("Could not record the failure of job %s", job_id)
        return None
    if failed is None:
        logger.warning(
            "Dropped a bad message for %s naming job %s: %s; the job is left alone (%s)",
            sender,
            job_id,
            error.message,
            _spared(before, sender),
        )
        return None
    return job_id


def _spared(stored: Job | None, task_name: str) -> str:
    if stored is None:
        return "no such job is stored"
    if stored.is_final or stored.status is JobStatus.SCHEDULED:
        return f"it is {stored.status.name}"
    step = stored.current_step_name
    if step is not None and step_task_name(stored.workflow_name, step) != task_name:
        return f"it is at step {step!r} of workflow {stored.workflow_name!r}"
    if stored.claim is not None:
        return f"a live claim holds it, until {stored.lease_until}"
    return f"it has moved on, to {stored.steps_completed} steps completed"


def reject(
    rt: Runtime, task: Task[Any, Any], step: WorkflowStep[Any, Any], payload: Any, why: str
) -> dict[str, Any]:
    hop = payload.get("steps_completed") if isinstance(payload, dict) else None
    error = JobError(
        type="MalformedMessage",
        message=f"A message for {step.task_name} {why}; it was dropped",
        step=step.name,
    )
    failed = reject_message(
        rt, payload, error, step.task_name, hop if isinstance(hop, int) else None
    )
    return reply(task, {"job_id": failed, "status": "REJECTED", "step": step.name})


def _where(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    # The location and the kind of error, never the value: messages may hold personal data.
    return f"{'.'.join(str(part) for part in first['loc']) or 'the top'} ({first['type']})"


def not_a_job(exc: ValidationError) -> str:
    """Why a payload is not a job, for the log and the job's error."""
    return f"is not a job ({len(exc.errors())} errors, first at {_where(exc)})"


def dropped_because(stored: Job | None, message: Job) -> str:
    """Why a step message of `message` is not run, given the job as stored."""
    if stored is None:
        return "no such job is stored (deleted, or expired)"
    if stored.workflow_name != message.workflow_name:
        return f"the job belongs to workflow {stored.workflow_name!r}"
    if stored.is_final:
        return f"the job is already {stored.status.name}"
    if stored.status is JobStatus.RUNNING and stored.steps_completed == message.steps_completed:
        return f"a duplicate: the step is running elsewhere (lease until {stored.lease_until})"
    return (
        f"stale: the job is {stored.status.name} at step {stored.current_step_name!r} after "
        f"{stored.steps_completed} steps, the message was sent after {message.steps_completed}"
    )
