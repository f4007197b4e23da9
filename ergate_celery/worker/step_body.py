"""The body of every step task: claim the step, run it, advance the job, finish, publish the next.

A claim holds a token and a lease, which the worker renews while the step runs (leases.py): a
copy of the message of a step that is running is dropped, and only an expired lease is taken
over. The outcome is written only by the run that holds the claim, and carries its token, so a
write whose reply was lost is recognised when it is tried again.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery import Task
from celery.exceptions import Reject
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from ergate_celery.exceptions import InvalidInputError
from ergate_celery.lifecycle.advance import (
    FannedOut,
    Raised,
    advance,
    percent_after_return,
    run_step,
)
from ergate_celery.lifecycle.events import Claim, Finish, ProgressReported, Yield
from ergate_celery.model.annotations import StepRun
from ergate_celery.model.job import Job, JobError, StepTiming, describe
from ergate_celery.model.job_status import JobStatus
from ergate_celery.model.json_values import json_result
from ergate_celery.model.progress import CancelWatch, ProgressReporter
from ergate_celery.model.workflow_step import WorkflowStep
from ergate_celery.worker import fan_out, observing
from ergate_celery.worker.claiming import ClaimApplied, claims_in_one
from ergate_celery.worker.concurrency import admitted, free_slot, needs_slot
from ergate_celery.worker.leases import (
    LastWritten,
    claim_token,
    hand_back,
    lease_expired,
    lease_length,
    lease_seen,
)
from ergate_celery.worker.one_trip import Sending
from ergate_celery.worker.outages import requeued_on_outage
from ergate_celery.worker.pausing import park
from ergate_celery.worker.rejects import dropped_because, not_a_job, reject
from ergate_celery.worker.renewer import Heartbeat
from ergate_celery.worker.retry_policy import retry_delay, should_retry
from ergate_celery.worker.runtime import Runtime
from ergate_celery.worker.step_message import carries_job
from ergate_celery.worker.step_results import display_options, own_result, reply, summary

logger = logging.getLogger(__name__)


def execute_step(
    rt: Runtime, step: WorkflowStep[Any, Any], task: Task[Any, Any], payload: Any
) -> dict[str, Any]:
    """Run one step message; returns the small summary stored as the task's result."""
    try:
        message = Job.model_validate(payload)
    except ValidationError as exc:
        return reject(rt, task, step, payload, not_a_job(exc))
    whole = carries_job(payload)
    try:
        observer = observing.observer
        if observer is None:
            return _execute(rt, step, task, message, whole)
        with observer.running_step(str(message.id), step.task_name):
            return _execute(rt, step, task, message, whole)
    except InvalidInputError as exc:
        if not exc.oversized:
            raise
        return reject(rt, task, step, payload, f"is too large ({exc})")


def _execute(
    rt: Runtime, step: WorkflowStep[Any, Any], task: Task[Any, Any], message: Job, whole: bool
) -> dict[str, Any]:
    with requeued_on_outage(f"Claiming {step} of job {message.id}"):
        short = not whole and claims_in_one(rt, step)
        if not whole and not short:
            message = _stored_run(rt, message)
        job = _claim(rt, step, task, message, short=short)
    if job is None:
        return reply(task, summary(message, step, dropped=True))
    if job.status is not JobStatus.RUNNING:  # cancelled, or failed, at the claim
        return reply(task, summary(job, step, dropped=True))
    token = job.claim
    assert token is not None
    claimed = job
    written = LastWritten(job)
    interval = rt.settings.progress_interval
    cancel = CancelWatch(lambda: _cancel_stored(rt, str(claimed.id)), interval)
    run = StepRun(
        job_id=str(job.id),
        workflow_name=job.workflow_name,
        step_name=step.name,
        step_index=step.index,
        hop=job.steps_completed,
        attempt=job.attempt,
        cancel_watch=cancel,
    )
    progress = ProgressReporter(
        job.percent_completed,
        percent_after_return(job, step.workflow),
        lambda percent: _store_progress(rt, claimed, step, percent, written),
        interval,
        cancel,
    )
    # An eager run (a WorkflowTester's) runs in its caller's thread, on a virtual clock.
    eager = bool(task.request.is_eager)
    heartbeat = Heartbeat(rt, str(job.id), token, step.task_name, written)
    with nullcontext() if eager else heartbeat:
        input_value = fan_out.step_input(rt, job, step.name)
        outcome = run_step(
            step, input_value, job.user_context, run, progress, job.signals, rt.clock
        )
        if isinstance(outcome, FannedOut):
            job, outcome = fan_out.start(rt, job, step, outcome)
    if isinstance(outcome, Raised) and should_retry(step, task, outcome.exception):
        countdown = retry_delay(step, task)
        lease_until = rt.clock() + timedelta(seconds=countdown) + lease_length(rt.settings)
        with requeued_on_outage(f"Yielding {step} of job {job.id} for a retry"):
            rt.retrying(
                f"yielding {step} of job {job.id} for a retry",
                lambda: rt.apply(
                    str(job.id), Yield(token, lease_until), sender=step.task_name, assume=job
                ),
            )
        # The retry is a new message: it shows what every step message shows, not the job.
        display = display_options(job, step, rt.settings.show_task_args)
        raise task.retry(exc=outcome.exception, countdown=countdown, **display)
    kept = rt.settings.timings_kept
    try:
        advanced = advance(job, step.workflow, outcome)
    except Exception as exc:  # the step path failed, not the step: still the step's outcome
        outcome, advanced = Raised(exc), _failed(job, step, exc)
    after = _timed(job, step, advanced, kept, rt.clock())
    # A step that raised becomes a failed Celery task once its job's FAILED record is stored
    # (Flower's Failed tab, task_failure, error trackers); Celery then stores its result.
    raised = outcome.exception if isinstance(outcome, Raised) else None
    send = rt.sending()  # the next step's message goes with the outcome, where it can
    with requeued_on_outage(f"Storing the outcome of {step} for job {job.id}"):
        # Against the record as this run last wrote it (not after a fan-out's own writes).
        stored = written.job if job is claimed else job
        finished = _finish(
            rt, task, job, step, after, kept, with_result=raised is None, send=send, stored=stored
        )
    if raised is not None and finished is not None:
        raise _reraisable(raised)
    if finished is None:
        logger.warning(
            "Dropped the outcome of %s for job %s: another run took the job over", step, job.id
        )
        return reply(task, summary(job, step, dropped=True))
    if finished.status is JobStatus.QUEUED:
        if send is None or not send.carried(finished):
            rt.publish_current_step(finished, step.task_name)
    elif finished.fan_out is not None:
        fan_out.after_step(rt, finished, step.task_name)
    return summary(finished, step)


def _claim(
    rt: Runtime,
    step: WorkflowStep[Any, Any],
    task: Task[Any, Any],
    message: Job,
    *,
    watch: bool = True,
    short: bool = False,
) -> Job | None:
    begun = time.monotonic()
    job_id = str(message.id)
    if rt.paused is not None and rt.paused.holds(step.workflow.unique_name):
        park(rt, step, message)
        return None
    slotted = needs_slot(step, message)
    if slotted and not admitted(rt, step, message):
        return None
    now = rt.clock()
    token = claim_token(task.request.hostname)
    claim = Claim(
        workflow_name=step.workflow.unique_name,
        step_name=step.name,
        step_index=step.index,
        steps_completed=message.steps_completed,
        token=token,
        lease_until=now + lease_length(rt.settings),
        max_attempts=rt.settings.max_step_attempts,
        workflow_version=step.workflow.version,
    )
    applied = ClaimApplied(rt, claim, now, message, short=short)
    before, after = rt.retrying(
        f"claiming {step} of job {job_id}", partial(applied, sender=step.task_name, task=task)
    )
    if after is not None:
        return after
    held = before is not None and before.claim is not None
    seen = lease_seen(task)
    copy = _redelivered(task) or seen is not None
    if watch and held and copy and _same_run(before, message):
        # Its worker may be gone (the broker saw it die) or alive (the broker restored a
        # message held past its visibility timeout): only the lease tells.
        assert before is not None
        lease = before.lease_until
        if seen is not None and lease is not None and lease > seen:
            expired: bool | None = False  # renewed since this copy was handed back
        else:
            expired = lease_expired(rt, job_id, before, give_up_at=_watch_until(task, begun))
        if expired is None and lease is not None and hand_back(rt, task, before):
            # A lease longer than this run's time limit: this copy comes back once, when the
            # lease would expire, rather than watch it in turns up to its time limit.
            logger.info("Handed a copy of %s of job %s back: its lease still holds", step, job_id)
            return None
        if expired is None:
            # Interrupted at its time limit, the copy would be acknowledged and the lost step
            # left to the sweep. Back in the queue it comes again marked redelivered, and
            # that copy watches on.
            logger.info("Requeued a copy of %s of job %s: its lease still holds", step, job_id)
            raise Reject("the lease of the job's claim still holds", requeue=True)
        if expired:
            return _claim(rt, step, task, message, watch=False, short=short)
    if before is not None and _stranded_successor(before, message, step, task):
        # The worker that ran this step died after storing its outcome and before publishing
        # the next step: the redelivered message hands the job on.
        logger.warning("Republishing step %s of job %s", before.current_step_name, job_id)
        rt.publish_current_step(before, step.task_name)
        return None
    logger.warning(
        "Dropped a message for %s of job %s: %s", step, job_id, dropped_because(before, message)
    )
    if before is not None and before.is_final and _redelivered(task):
        # Its worker may have died between the child's last write and counting it.
        fan_out.child_ended(rt, before, step.task_name)
    if slotted and before is not None and before.is_final:
        free_slot(rt, before)  # a late copy of a message took a slot for an ended job
    return None


def _stored_run(rt: Runtime, message: Job) -> Job:
    """The job as stored if it is still at the run the message names (the claim's guess of
    the record: right unless a write comes between), else the message's own place."""
    job_id = str(message.id)
    stored = rt.retrying(f"reading job {job_id}", lambda: rt.store.get(job_id))
    if stored is not None and _same_run(stored, message):
        return stored
    return message


def _watch_until(task: Task[Any, Any], begun: float) -> float | None:
    """When a copy stops watching a lease: three quarters into the run's first time limit,
    soft or hard (the message's own, or its task's), leaving the rest to requeue it before
    Celery interrupts it."""
    hard, soft = task.request.timelimit or (None, None)
    limits = [float(s) for s in (hard or task.time_limit, soft or task.soft_time_limit) if s]
    return begun + 0.75 * min(limits) if limits else None


def _same_run(stored: Job | None, message: Job) -> bool:
    return (
        stored is not None
        and stored.workflow_name == message.workflow_name
        and stored.steps_completed == message.steps_completed
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
    rt: Runtime,
    task: Task[Any, Any],
    job: Job,
    step: WorkflowStep[Any, Any],
    after: Job,
    kept: int,
    *,
    with_result: bool = True,
    send: Sending | None = None,
    stored: Job | None = None,
) -> Job | None:
    token = job.claim
    assert token is not None
    # The step's summary is stored with the outcome (one write on Redis), not by Celery.
    result = own_result(task, step) if with_result else None

    def write(outcome: Job) -> Job | None:
        event = Finish(token, outcome)
        return rt.retrying(
            f"storing the outcome of {step} for job {job.id}",
            lambda: (
                rt.apply(
                    str(job.id),
                    event,
                    sender=step.task_name,
                    assume=stored or job,
                    result=result,
                    task=task,
                    send=send,
                ).after
            ),
        )

    try:
        if after.last_return_value is not job.last_return_value:  # the step gave a value
            after = json_result(step, after)
        return write(after)
    except (PydanticSerializationError, InvalidInputError, RecursionError, ValueError) as exc:
        # The step's return value cannot be stored: fail the job, keeping its last good value.
        reason = (
            exc
            if isinstance(exc, InvalidInputError)
            else InvalidInputError(
                f"Step {step} returned a value that cannot be stored as JSON "
                f"({type(exc).__name__}: {describe(exc)}); return dicts, lists, strings, "
                "numbers, booleans or None"
            )
        )
        return write(_timed(job, step, _failed(job, step, reason), kept, rt.clock()))


def _failed(job: Job, step: WorkflowStep[Any, Any], exc: BaseException) -> Job:
    error = JobError.from_exception(exc, step.name)
    return job.model_copy(update={"status": JobStatus.FAILED, "error": error})


def _reraisable(exc: Exception) -> Exception:
    """`exc`, or, when it cannot even be described (its `__str__` raises), an error that
    can: Celery logs and stores it as the failed task's exception."""
    try:
        str(exc)
    except Exception:
        return RuntimeError(describe(exc))
    return exc


def _timed(job: Job, step: WorkflowStep[Any, Any], after: Job, kept: int, now: datetime) -> Job:
    timing = StepTiming(
        step=step.name,
        index=step.index,
        started_at=job.step_started_at or now,
        finished_at=now,
        attempt=job.attempt,
        outcome=after.status.name,
    )
    timings = [*job.timings[-(kept - 1) :], timing] if kept > 1 else [timing]
    return after.model_copy(update={"timings": timings, "step_started_at": None})


def _store_progress(
    rt: Runtime, job: Job, step: WorkflowStep[Any, Any], percent: float, written: LastWritten
) -> bool | None:
    """Store the step's progress; whether the job was cancelled meanwhile (None: unknown)."""
    assert job.claim is not None
    lease = rt.clock() + lease_length(rt.settings)
    try:
        stored, after = rt.apply(
            str(job.id), ProgressReported(job.claim, percent, lease), sender=step.task_name
        )
        written(after)
    except Exception:
        # Progress is best-effort: a backend blip must not fail the step that reports it.
        logger.warning("Could not store the progress of job %s", job.id, exc_info=True)
        return None
    return stored is not None and stored.status is JobStatus.CANCELLING


def _cancel_stored(rt: Runtime, job_id: str) -> bool:
    """Whether the job of a running step is CANCELLING, as stored now (False when unsure:
    a backend blip must not stop a step)."""
    try:
        stored = rt.store.get(job_id)
    except Exception:
        logger.warning("Could not read whether job %s was cancelled", job_id, exc_info=True)
        return False
    return stored is not None and stored.status is JobStatus.CANCELLING
