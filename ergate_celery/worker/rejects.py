"""Messages that cannot run — not a job, too large, for a step this worker does not know: the
live job they name ends FAILED with the reason, and the message is dropped.

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
from ergate_celery.model.workflow_step import WorkflowStep
from ergate_celery.worker.step_results import reply

if TYPE_CHECKING:
    from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)


def reject_message(
    rt: Runtime, payload: Any, error: JobError, sender: str, steps_completed: int | None = None
) -> str | None:
    """Fail the live job a bad message names, if it names one; returns its id.

    Only a job that is not final or waiting, and (when `steps_completed` is given) still at
    that point, is touched: a message that cannot be read must not fail a job that moved on.
    """
    job_id = payload.get("id") if isinstance(payload, dict) else None
    if not isinstance(job_id, str):
        logger.warning("Dropped a message for %s that names no job: %s", sender, error.message)
        return None
    try:
        failed = rt.apply(job_id, MessageRejected(error, steps_completed), sender=sender).after
    except Exception:
        logger.exception("Could not record the failure of job %s", job_id)
        return None
    if failed is None:
        logger.warning("Dropped a bad message for job %s: %s", job_id, error.message)
        return None
    return job_id


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
