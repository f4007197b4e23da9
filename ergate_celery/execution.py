"""The body of every step task: claim the step, run it, store the outcome, publish the next.

A step message is current only while the stored job sits at the same step with the same
`steps_completed`; claiming and finishing are compare-and-set writes, so a duplicated or
stale message never runs later steps twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from celery import Task
from celery.utils.dispatch import Signal
from celery.utils.time import get_exponential_backoff_interval
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from . import signals
from .annotations import StepRun
from .exceptions import InvalidInputError
from .job import Job, JobError, StepTiming
from .job_status import JobStatus
from .progress import ProgressReporter
from .step_runner import Outcome, StepOutcome, advance, percent_after_return, run_step
from .stores.base import TaskResult
from .workflow_step import WorkflowStep

if TYPE_CHECKING:
    from .binding import ErgateCelery

logger = logging.getLogger("ergate_celery")
T = TypeVar("T")

_RUNNABLE = (JobStatus.QUEUED, JobStatus.RUNNING)
#: The Celery event type sent with each lifecycle signal when worker events are on.
_EVENT_TYPES: dict[Signal, str] = {
    signals.job_started: "ergate-job-started",
    signals.step_started: "ergate-step-started",
    signals.step_completed: "ergate-step-completed",
    signals.job_completed: "ergate-job-completed",
    signals.job_failed: "ergate-job-failed",
    signals.job_aborted: "ergate-job-aborted",
    signals.job_cancelled: "ergate-job-cancelled",
}
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
    """Run one step message; returns the small summary stored as the task's result."""
    message = _parse(step, payload)
    if message is None:
        return _reject(ergate, task, step, payload, "is not a valid job")
    try:
        return _execute(ergate, step, task, message)
    except InvalidInputError as exc:
        if not exc.oversized:
            raise
        # The claimed record would exceed ergate_max_payload_bytes: so does the message.
        logger.error("Rejected a message for %s: %s", step.task_name, exc)
        return _reject(ergate, task, step, payload, f"is too large ({exc})")


def _reject(
    ergate: ErgateCelery,
    task: Task[Any, Any],
    step: WorkflowStep[Any, Any],
    payload: Any,
    why: str,
) -> dict[str, Any]:
    failed = fail_identified_job(
        ergate,
        payload,
        JobError(
            type="MalformedMessage",
            message=f"A message for {step.task_name} {why}; it was dropped",
            step=step.name,
        ),
        step.index,
    )
    return _reply(task, {"job_id": failed, "status": "REJECTED", "step": step.name})


def _execute(
    ergate: ErgateCelery, step: WorkflowStep[Any, Any], task: Task[Any, Any], message: Job
) -> dict[str, Any]:
    job_id = str(message.id)
    store = ergate.store
    seen: list[Job] = []  # what the last claim attempt read

    def claim(stored: Job) -> Job | None:
        seen[:] = [stored]
        if not _is_current(stored, message) or stored.current_step != step.index:
            return None
        if stored.status is JobStatus.CANCELLING:
            return stored.model_copy(update={"status": JobStatus.CANCELLED})
        if stored.status not in _RUNNABLE:
            return None
        first_run = stored.status is JobStatus.QUEUED and stored.steps_completed == 0
        if first_run and stored.deadline_passed(datetime.now(UTC)):
            return stored.expired()
        now = datetime.now(UTC)
        return stored.model_copy(
            update={
                "status": JobStatus.RUNNING,
                "attempt": stored.attempt + 1,
                "started_at": stored.started_at or now,
                "step_started_at": now,
            }
        )

    job = _retrying(
        ergate,
        f"claiming {step} of job {job_id}",
        lambda: store.update(job_id, claim, assume=message),
    )
    if job is None or job.status is not JobStatus.RUNNING:
        if job is not None:
            _send_final(ergate, task, step, job)
        elif seen and _stranded_successor(seen[0], message, task):
            # The worker that ran this step died after storing its outcome and before
            # publishing the next step: the redelivered message hands the job on.
            logger.warning("Republishing step #%d of job %s", seen[0].current_step, job_id)
            _publish_or_fail(ergate, seen[0])
            return _reply(task, _summary(seen[0], step, dropped=True))
        logger.info("Dropped stale step message %s for job %s", step, job_id)
        return _reply(task, _summary(job or message, step, dropped=True))

    if seen[0].status is JobStatus.QUEUED and job.steps_completed == 0:
        _announce(ergate, task, signals.job_started, job, step)
    _announce(ergate, task, signals.step_started, job, step)

    run = StepRun(
        job_id=job_id,
        workflow_name=job.workflow_name,
        step_name=step.name,
        step_index=step.index,
        hop=job.steps_completed,
        attempt=job.attempt,
    )
    progress = ProgressReporter(
        job.percent_completed,
        percent_after_return(job, step.workflow),
        lambda percent: _store_progress(ergate, job, percent),
        ergate.settings.progress_interval,
    )
    outcome = run_step(step, job.get_input_value(), job.user_context, run, progress)
    if outcome.outcome is Outcome.RAISED and _should_retry(step, task, outcome):
        assert outcome.exception is not None
        raise task.retry(exc=outcome.exception, countdown=_retry_delay(step, task))

    after = _timed(job, step, advance(job, step.workflow, outcome))
    if after.status is JobStatus.FAILED and after.error is not None:
        logger.error(
            "Job %s failed at step %s: %s: %s\n%s",
            job_id,
            step,
            after.error.type,
            after.error.message,
            after.error.traceback or "",
        )
    finished = _retrying(
        ergate,
        f"storing the outcome of {step} for job {job_id}",
        lambda: _finish(ergate, task, job, step, after),
    )
    if finished is None:
        logger.info("Step %s of job %s finished after another run had", step, job_id)
        return _reply(task, _summary(job, step, dropped=True))
    # Signals go out before the next step is published, so receivers see writes in order.
    _announce(ergate, task, signals.step_completed, finished, step)
    _send_final(ergate, task, step, finished)
    if finished.status is JobStatus.QUEUED:
        _publish_or_fail(ergate, finished)
    return _summary(finished, step)


def _stranded_successor(stored: Job, message: Job, task: Task[Any, Any]) -> bool:
    # Only a redelivery (the broker saw the consumer die) may republish: a plain duplicate
    # of an old message must not publish a successor twice.
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    return (
        redelivered
        and stored.status is JobStatus.QUEUED
        and stored.steps_completed == message.steps_completed + 1
        and stored.timings[-1:] != []
        and stored.timings[-1].index == message.current_step
    )


def _retrying(ergate: ErgateCelery, what: str, action: Callable[[], T]) -> T:
    # The broker or backend may be down for a while: retry with backoff rather than leave
    # the job between two states; the last failure propagates.
    attempts = ergate.settings.after_step_attempts
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (PydanticSerializationError, InvalidInputError):
            raise
        except Exception as exc:
            if attempt == attempts:
                raise
            delay = min(0.25 * 2 ** (attempt - 1), 8.0)
            logger.warning(
                "%s failed (%r); try %d of %d in %.2fs", what, exc, attempt + 1, attempts, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _publish_or_fail(ergate: ErgateCelery, job: Job) -> None:
    try:
        _retrying(
            ergate,
            f"publishing step #{job.current_step} of job {job.id}",
            lambda: ergate.publish(job),
        )
    except Exception as exc:
        error = JobError.from_exception(exc, None)
        error = error.model_copy(
            update={"message": f"The next step could not be published: {error.message}"}
        )

        def fail(stored: Job) -> Job | None:
            if stored.status is not JobStatus.QUEUED or not _is_current(stored, job):
                return None
            return stored.model_copy(update={"status": JobStatus.FAILED, "error": error})

        failed = ergate.store.update(str(job.id), fail)
        if failed is not None:
            signals.job_failed.send(sender="ergate", job=failed)
        raise


def _finish(
    ergate: ErgateCelery,
    task: Task[Any, Any],
    job: Job,
    step: WorkflowStep[Any, Any],
    after: Job,
) -> Job | None:
    # The step's summary is stored with the outcome (one write on Redis), not by Celery.
    result = _own_result(task, lambda written: _summary(written, step))

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
        return ergate.store.update(str(job.id), commit(after), assume=job, result=result)
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
        failed = job.model_copy(
            update={
                "status": JobStatus.FAILED,
                "error": JobError.from_exception(reason, step.name),
            }
        )
        return ergate.store.update(str(job.id), commit(failed), assume=job, result=result)


def fail_identified_job(
    ergate: ErgateCelery, payload: Any, error: JobError, step_index: int | None = None
) -> str | None:
    """Mark FAILED the live job a bad message names, if it names one; returns its id.

    Only a job that is not final, and (when `step_index` is given) is at that step, is
    touched: a message that cannot be read must not fail a job that has moved on.
    """
    job_id = payload.get("id") if isinstance(payload, dict) else None
    if not isinstance(job_id, str):
        logger.error("Dropped a message that names no job: %s", error.message)
        return None

    def fail(stored: Job) -> Job | None:
        if stored.is_final or stored.status is JobStatus.SCHEDULED:
            return None
        if step_index is not None and stored.current_step != step_index:
            return None
        return stored.model_copy(update={"status": JobStatus.FAILED, "error": error})

    try:
        failed = ergate.store.update(job_id, fail)
    except Exception:
        logger.exception("Could not record the failure of job %s", job_id)
        return None
    if failed is None:
        logger.error("Dropped a bad message for job %s: %s", job_id, error.message)
        return None
    logger.error("Job %s FAILED: %s", job_id, error.message)
    signals.job_failed.send(sender=error.step or "ergate", job=failed)
    return job_id


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


def _send_final(
    ergate: ErgateCelery, task: Task[Any, Any], step: WorkflowStep[Any, Any], job: Job
) -> None:
    signal = _FINAL_SIGNALS.get(job.status)
    if signal is not None:
        _announce(ergate, task, signal, job, step)


def _announce(
    ergate: ErgateCelery,
    task: Task[Any, Any],
    signal: Signal,
    job: Job,
    step: WorkflowStep[Any, Any],
) -> None:
    """Send a lifecycle signal, and the same as a Celery event when worker events are on."""
    signal.send(sender=step.task_name, job=job)
    if ergate.events_enabled:
        task.send_event(
            _EVENT_TYPES[signal],
            job_id=job.id,
            workflow=job.workflow_name,
            step=step.name,
            status=job.status.name,
            percent_completed=job.percent_completed,
        )


def _timed(job: Job, step: WorkflowStep[Any, Any], after: Job) -> Job:
    started = job.step_started_at or datetime.now(UTC)
    timing = StepTiming(
        step=step.name,
        index=step.index,
        started_at=started,
        finished_at=datetime.now(UTC),
        attempt=job.attempt,
        outcome=after.status.name,
    )
    return after.model_copy(update={"timings": [*job.timings, timing], "step_started_at": None})


def _store_progress(ergate: ErgateCelery, job: Job, percent: float) -> None:
    def move(stored: Job) -> Job | None:
        running = stored.status in (JobStatus.RUNNING, JobStatus.CANCELLING)
        if not running or not _is_current(stored, job) or stored.percent_completed >= percent:
            return None
        return stored.model_copy(update={"percent_completed": percent})

    ergate.store.update(str(job.id), move)


def _own_result(
    task: Task[Any, Any], summarize: Callable[[Job], dict[str, Any]]
) -> TaskResult | None:
    """The step task's own result, which it stores itself (step tasks ignore their results);
    None when there is nowhere to store it (an eager call)."""
    request = task.request
    if request.id is None or request.is_eager:
        return None
    return TaskResult(request.id, summarize, request)


def _reply(task: Task[Any, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Store `summary` as the task's result, and return it."""
    result = _own_result(task, lambda _: summary)
    if result is not None:
        result.store(task.backend, summary)
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
