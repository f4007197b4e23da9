"""The body of every step task: claim the step, run it, advance the job, finish, publish the next.

A claim holds a token and a lease: a duplicate message of a step that is running is dropped,
and only a redelivery (the broker saw the worker die) or an expired lease takes it over. The
outcome is written only by the run that holds the claim, and carries its token, so a write
whose reply was lost is recognised when it is tried again.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from .annotations import StepRun
from .exceptions import InvalidInputError
from .job import Job, JobError, StepTiming
from .job_status import JobStatus
from .lifecycle import Claim, Finish, Progress, Reject, Yield
from .progress import ProgressReporter
from .runtime import Runtime
from .step_runner import Outcome, StepOutcome, advance, percent_after_return, run_step
from .stores.base import TaskResult
from .workflow_step import WorkflowStep

logger = logging.getLogger("ergate_celery")


def execute_step(
    rt: Runtime, step: WorkflowStep[Any, Any], task: Task[Any, Any], payload: Any
) -> dict[str, Any]:
    """Run one step message; returns the small summary stored as the task's result."""
    try:
        message = Job.model_validate(payload)
    except ValidationError as exc:
        why = f"is not a job ({len(exc.errors())} errors, first at {_where(exc)})"
        return _reject(rt, task, step, payload, why)
    try:
        return _execute(rt, step, task, message)
    except InvalidInputError as exc:
        if not exc.oversized:
            raise
        return _reject(rt, task, step, payload, f"is too large ({exc})")


def _execute(
    rt: Runtime, step: WorkflowStep[Any, Any], task: Task[Any, Any], message: Job
) -> dict[str, Any]:
    job = _claim(rt, step, task, message)
    if job is None:
        return _reply(task, _summary(message, step, dropped=True))
    if job.status is not JobStatus.RUNNING:  # cancelled, or failed, at the claim
        return _reply(task, _summary(job, step, dropped=True))
    token = job.claim
    assert token is not None
    run = StepRun(
        job_id=str(job.id),
        workflow_name=job.workflow_name,
        step_name=step.name,
        step_index=step.index,
        hop=job.steps_completed,
        attempt=job.attempt,
    )
    progress = ProgressReporter(
        job.percent_completed,
        percent_after_return(job, step.workflow),
        lambda percent: _store_progress(rt, job, step, percent),
        rt.settings.progress_interval,
    )
    outcome = run_step(step, job.get_input_value(), job.user_context, run, progress)
    if outcome.outcome is Outcome.RAISED and _should_retry(step, task, outcome):
        assert outcome.exception is not None
        rt.retrying(
            f"yielding {step} of job {job.id} for a retry",
            lambda: rt.apply(str(job.id), Yield(token), sender=step.task_name, assume=job),
        )
        raise task.retry(exc=outcome.exception, countdown=_retry_delay(step, task))
    finished = _finish(rt, task, job, step, _timed(job, step, advance(job, step.workflow, outcome)))
    if finished is None:
        logger.warning(
            "Dropped the outcome of %s for job %s: another run took the job over", step, job.id
        )
        return _reply(task, _summary(job, step, dropped=True))
    if finished.status is JobStatus.QUEUED:
        rt.hand_on(finished, step.task_name)
    return _summary(finished, step)


def _claim(
    rt: Runtime, step: WorkflowStep[Any, Any], task: Task[Any, Any], message: Job
) -> Job | None:
    job_id = str(message.id)
    now = datetime.now(UTC)
    token = uuid.uuid4().hex
    claim = Claim(
        workflow_name=step.workflow.unique_name,
        step_name=step.name,
        step_index=step.index,
        steps_completed=message.steps_completed,
        token=token,
        lease_until=now + timedelta(seconds=rt.settings.stuck_after),
        redelivered=_redelivered(task),
        max_attempts=rt.settings.max_step_attempts,
        workflow_version=step.workflow.version,
    )
    before, after = rt.retrying(
        f"claiming {step} of job {job_id}",
        lambda: rt.apply(job_id, claim, sender=step.task_name, now=now, assume=message, task=task),
    )
    if after is not None:
        return after
    if before is not None and before.claim == token:  # written, but the reply was lost
        rt.announce(message, before, step.task_name, task)
        return before
    if before is not None and _stranded_successor(before, message, step, task):
        # The worker that ran this step died after storing its outcome and before publishing
        # the next step: the redelivered message hands the job on.
        logger.warning("Republishing step %s of job %s", before.current_step_name, job_id)
        rt.hand_on(before, step.task_name)
        return None
    logger.warning("Dropped a message for %s of job %s: %s", step, job_id, _why(before, message))
    return None


def _why(stored: Job | None, message: Job) -> str:
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


def _redelivered(task: Task[Any, Any]) -> bool:
    return bool((task.request.delivery_info or {}).get("redelivered"))


def _stranded_successor(
    stored: Job, message: Job, step: WorkflowStep[Any, Any], task: Task[Any, Any]
) -> bool:
    # Only a redelivery may republish: a plain duplicate of an old message must not publish
    # a successor twice.
    return (
        _redelivered(task)
        and stored.status is JobStatus.QUEUED
        and stored.steps_completed == message.steps_completed + 1
        and stored.timings[-1:] != []
        and stored.timings[-1].step == step.name
    )


def _finish(
    rt: Runtime, task: Task[Any, Any], job: Job, step: WorkflowStep[Any, Any], after: Job
) -> Job | None:
    token = job.claim
    assert token is not None
    # The step's summary is stored with the outcome (one write on Redis), not by Celery.
    result = _own_result(task, step)

    def write(outcome: Job) -> Job | None:
        def attempt() -> Job | None:
            before, written = rt.apply(
                str(job.id),
                Finish(token, outcome),
                sender=step.task_name,
                assume=job,
                result=result,
                task=task,
            )
            if written is None and before is not None and before.finished_by == token:
                rt.announce(job, before, step.task_name, task)  # written; the reply was lost
                return before
            return written

        return rt.retrying(f"storing the outcome of {step} for job {job.id}", attempt)

    try:
        return write(after)
    except (PydanticSerializationError, InvalidInputError) as exc:
        # The step's return value cannot be stored: fail the job, keeping its last good value.
        reason = (
            exc
            if isinstance(exc, InvalidInputError)
            else InvalidInputError(
                f"Step {step} returned a value that is not JSON-serializable: {exc}; "
                "return dicts, lists, strings, numbers, booleans or None"
            )
        )
        error = JobError.from_exception(reason, step.name)
        failed = job.model_copy(update={"status": JobStatus.FAILED, "error": error})
        return write(_timed(job, step, failed))


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
        failed = rt.apply(job_id, Reject(error, steps_completed), sender=sender).after
    except Exception:
        logger.exception("Could not record the failure of job %s", job_id)
        return None
    if failed is None:
        logger.warning("Dropped a bad message for job %s: %s", job_id, error.message)
        return None
    return job_id


def _reject(
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
    return _reply(task, {"job_id": failed, "status": "REJECTED", "step": step.name})


def _where(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    # The location and the kind of error, never the value: messages may hold personal data.
    return f"{'.'.join(str(part) for part in first['loc']) or 'the top'} ({first['type']})"


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


def _timed(job: Job, step: WorkflowStep[Any, Any], after: Job) -> Job:
    timing = StepTiming(
        step=step.name,
        index=step.index,
        started_at=job.step_started_at or datetime.now(UTC),
        finished_at=datetime.now(UTC),
        attempt=job.attempt,
        outcome=after.status.name,
    )
    return after.model_copy(update={"timings": [*job.timings, timing], "step_started_at": None})


def _store_progress(rt: Runtime, job: Job, step: WorkflowStep[Any, Any], percent: float) -> None:
    assert job.claim is not None
    lease = datetime.now(UTC) + timedelta(seconds=rt.settings.stuck_after)
    try:
        rt.apply(str(job.id), Progress(job.claim, percent, lease), sender=step.task_name)
    except Exception:
        # Progress is best-effort: a backend blip must not fail the step that reports it.
        logger.warning("Could not store the progress of job %s", job.id, exc_info=True)


def _own_result(task: Task[Any, Any], step: WorkflowStep[Any, Any]) -> TaskResult | None:
    """The step task's own result, which it stores itself (step tasks ignore their results);
    None when there is nowhere to store it (an eager call)."""
    request = task.request
    if request.id is None or request.is_eager:
        return None
    return TaskResult(request.id, lambda written: _summary(written, step), request)


def _reply(task: Task[Any, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Store `summary` as the task's result, and return it."""
    request = task.request
    if request.id is not None and not request.is_eager:
        TaskResult(request.id, lambda _: summary, request).store(task.backend, summary)
    return summary


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
