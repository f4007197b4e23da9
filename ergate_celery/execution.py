"""The body of every step task: claim the step, run it, store the outcome, publish the next.

A step message is current only while the stored job sits at the same step with the same
`steps_completed`; claiming and finishing are compare-and-set writes, so a duplicated or
stale message never runs later steps twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from . import signals
from .exceptions import InvalidInputError
from .job import Job, JobError
from .job_status import JobStatus
from .step_runner import Outcome, StepOutcome, advance, run_step
from .workflow_step import WorkflowStep

if TYPE_CHECKING:
    from .binding import ErgateCelery

logger = logging.getLogger("ergate_celery")

_RUNNABLE = (JobStatus.QUEUED, JobStatus.RUNNING)
_FINAL_SIGNALS = {
    JobStatus.COMPLETED: signals.job_completed,
    JobStatus.FAILED: signals.job_failed,
    JobStatus.ABORTED: signals.job_aborted,
    JobStatus.CANCELLED: signals.job_cancelled,
}


def _is_current(stored: Job, message: Job) -> bool:
    return (
        stored.current_step == message.current_step
        and stored.steps_completed == message.steps_completed
    )


def execute_step(
    ergate: ErgateCelery, step: WorkflowStep[Any, Any], task: Task[Any, Any], payload: Any
) -> dict[str, Any]:
    """Run one step message; returns the small summary Celery stores as the task's result."""
    message = _parse(step, payload)
    if message is None:
        return {"job_id": None, "status": "REJECTED", "step": step.name}
    job_id = str(message.id)
    store = ergate.store
    was_queued: list[bool] = []

    def claim(stored: Job) -> Job | None:
        if not _is_current(stored, message) or stored.current_step != step.index:
            return None
        if stored.status is JobStatus.CANCELLING:
            return stored.model_copy(update={"status": JobStatus.CANCELLED})
        if stored.status not in _RUNNABLE:
            return None
        first_run = stored.status is JobStatus.QUEUED and stored.steps_completed == 0
        if first_run and stored.deadline_passed(datetime.now(UTC)):
            return stored.expired()
        was_queued[:] = [stored.status is JobStatus.QUEUED]
        return stored.model_copy(update={"status": JobStatus.RUNNING})

    job = store.update(job_id, claim)
    if job is None or job.status is not JobStatus.RUNNING:
        if job is not None:
            _send_final(step, job)
        logger.info("Dropped stale step message %s for job %s", step, job_id)
        return _summary(job or message, step, dropped=True)

    if was_queued and was_queued[0] and job.steps_completed == 0:
        signals.job_started.send(sender=step.task_name, job=job)
    signals.step_started.send(sender=step.task_name, job=job)

    outcome = run_step(step, job.get_input_value(), job.user_context)
    if outcome.outcome is Outcome.RAISED and _should_retry(step, task, outcome):
        assert outcome.exception is not None
        raise task.retry(exc=outcome.exception, countdown=_retry_delay(step, task))

    finished = _finish(ergate, job, step, advance(job, step.workflow, outcome))
    if finished is None:
        logger.info("Step %s of job %s finished after another run had", step, job_id)
        return _summary(job, step, dropped=True)
    # Signals go out before the next step is published, so receivers see writes in order.
    signals.step_completed.send(sender=step.task_name, job=finished)
    _send_final(step, finished)
    if finished.status is JobStatus.QUEUED:
        ergate.publish(finished)
    return _summary(finished, step)


def _finish(ergate: ErgateCelery, job: Job, step: WorkflowStep[Any, Any], after: Job) -> Job | None:
    def commit(target: Job) -> Any:
        def change(stored: Job) -> Job | None:
            if not _is_current(stored, job) or stored.status not in (
                JobStatus.RUNNING,
                JobStatus.CANCELLING,
            ):
                return None
            if stored.status is JobStatus.CANCELLING and target.status is JobStatus.QUEUED:
                return target.model_copy(update={"status": JobStatus.CANCELLED})
            return target

        return change

    try:
        return ergate.store.update(str(job.id), commit(after))
    except (PydanticSerializationError, InvalidInputError, ValueError, TypeError) as exc:
        # The step's return value cannot be stored: fail the job, keeping its last good value.
        reason = (
            exc
            if isinstance(exc, InvalidInputError)
            else InvalidInputError(
                f"Step {step} returned a value that is not JSON-serializable: {exc}; "
                "return dicts, lists, strings, numbers, booleans or None"
            )
        )
        failed = job.model_copy(
            update={
                "status": JobStatus.FAILED,
                "error": JobError.from_exception(reason, step.name),
            }
        )
        return ergate.store.update(str(job.id), commit(failed))


def _parse(step: WorkflowStep[Any, Any], payload: Any) -> Job | None:
    try:
        return Job.model_validate(payload)
    except ValidationError as exc:
        logger.error(
            "Rejected a message for %s that is not a job (%s); it was dropped",
            step.task_name,
            exc.errors(include_url=False),
        )
        return None


def _should_retry(step: WorkflowStep[Any, Any], task: Task[Any, Any], outcome: StepOutcome) -> bool:
    retry_for = step.task_options.get("autoretry_for", ())
    max_retries = task.max_retries
    return (
        bool(retry_for)
        and isinstance(outcome.exception, tuple(retry_for))
        and (max_retries is None or task.request.retries < max_retries)
    )


def _retry_delay(step: WorkflowStep[Any, Any], task: Task[Any, Any]) -> float:
    backoff = step.task_options.get("retry_backoff", False)
    if not backoff:
        delay: float = task.default_retry_delay
        return delay
    return float(
        get_exponential_backoff_interval(
            factor=int(backoff),
            retries=task.request.retries,
            maximum=step.task_options.get("retry_backoff_max", 600),
            full_jitter=step.task_options.get("retry_jitter", True),
        )
    )


def _send_final(step: WorkflowStep[Any, Any], job: Job) -> None:
    signal = _FINAL_SIGNALS.get(job.status)
    if signal is not None:
        signal.send(sender=step.task_name, job=job)


def _summary(job: Job, step: WorkflowStep[Any, Any], *, dropped: bool = False) -> dict[str, Any]:
    summary = {
        "job_id": job.id,
        "status": job.status.name,
        "step": step.name,
        "percent_completed": job.percent_completed,
    }
    if dropped:
        summary["dropped"] = True
    return summary
