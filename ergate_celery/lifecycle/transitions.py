"""Every status change of a job, as pure functions: (stored job, event, now) -> new job or None.

Whoever changes a job describes what happened as one of the events of `events.py` and hands
it to `transition`, inside the store's compare-and-set. None means "leave the record as it
is": the event does not apply to the job as it is stored now. Nothing here reads a clock, a
store or Celery, so the whole lifecycle is tested as a table (`table.LIFECYCLE`), and the
docs' state diagram is printed from that table.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ergate_celery.lifecycle import events, fan_out, flow, waiting
from ergate_celery.lifecycle.events import Event
from ergate_celery.lifecycle.publishing import marked
from ergate_celery.model.job import Job, JobError
from ergate_celery.model.job_status import (
    ACTIVE_STATUSES,
    RETRYABLE_STATUSES,
    RUNNING_STATUSES,
    WAITING_STATUSES,
    JobStatus,
)
from ergate_celery.model.workflow_step import step_task_name

S = JobStatus

#: The sweep's notes kept on a job, the latest ones: the record must keep room for them.
KEPT_RECOVERIES = 10
#: A job waiting QUEUED is published again after 1, 2, 4 ... at most 2**_MAX_DOUBLINGS times
#: `ergate_stuck_after`.
_MAX_DOUBLINGS = 10


def transition(stored: Job, event: Event, now: datetime) -> Job | None:
    """The job after `event`, or None when the event leaves the stored job as it is."""
    status = stored.status
    match event:
        case events.HandOver(to=to, parked=parked):
            if status is not S.PENDING:
                return None
            return stored.model_copy(update={"status": to, "parked": parked and to is S.QUEUED})
        case events.Release():
            return _release(stored, event, now)
        case events.Claim():
            return _claim(stored, event, now)
        case events.Finish(token=token, after=after):
            return _finish(stored, token, after, now)
        case events.Yield(token=token, lease_until=lease_until):
            if status is not S.RUNNING or stored.claim != token:
                return None
            return stored.model_copy(update={"claim": None, "lease_until": lease_until})
        case events.Renew(token=token, lease_until=lease_until):
            if status not in RUNNING_STATUSES or stored.claim != token:
                return None
            return stored.model_copy(update={"lease_until": lease_until})
        case events.ProcessLost(holder=holder):
            claim = stored.claim
            if status not in RUNNING_STATUSES or claim is None or not claim.startswith(holder):
                return None
            return stored.model_copy(update={"lease_until": None})
        case events.ProgressReported(token=token, percent=percent, lease_until=lease_until):
            holds = status in RUNNING_STATUSES and stored.claim == token
            if not holds or stored.percent_completed >= percent:
                return None
            return stored.model_copy(
                update={"percent_completed": percent, "lease_until": lease_until}
            )
        case events.Cancel():
            if status is S.SCHEDULED and fan_out.waits_for_children(stored):
                return fan_out.cancelled(stored)
            if status in WAITING_STATUSES:
                return _set(stored, S.CANCELLED)
            return _set(stored, S.CANCELLING) if status is S.RUNNING else None
        case events.TimeLimit(
            step_name=step_name, steps_completed=steps_completed, seconds=seconds, holder=holder
        ):
            at_step = stored.steps_completed == steps_completed and _at(stored, step_name)
            held = stored.claim is not None and stored.claim.startswith(holder)
            if status not in RUNNING_STATUSES or not at_step or not held:
                return None
            message = f"Step {step_name!r} ran past its hard time_limit of {seconds:g} s"
            return _fail(stored, "TimeLimitExceeded", message, step_name)
        case events.Recover():
            return _recover(stored, event, now)
        case events.PublishFailed(steps_completed=steps_completed, error=error):
            if status is not S.QUEUED or stored.steps_completed != steps_completed:
                return None
            return _failed(stored, error)
        case events.MessageRejected():
            return _failed(stored, event.error) if _harmed_by(stored, event, now) else None
        case events.Signalled(name=name, payload=payload):
            received = waiting.receive(stored, name, payload)
            if received is None or received.status is status:
                return received
            return received.model_copy(update=marked(event, now))
        case events.RetryRequested():
            return _retry(stored, event, now)
        case events.Published(mark=mark):
            if stored.queued_by != mark:
                return None
            return stored.model_copy(update={"queued_by": None, "lease_until": None})
        case events.Park(step_name=step_name, steps_completed=steps_completed):
            queued = status is S.QUEUED and not stored.parked
            if not queued or stored.steps_completed != steps_completed:
                return None
            return stored.model_copy(update={"parked": True}) if _at(stored, step_name) else None
        case events.Unpark():
            # A job waiting for a concurrency slot stays parked: only a freed slot starts it.
            if status is not S.QUEUED or not stored.parked or stored.waiting_for_slot:
                return None
            # Whoever unparks it publishes its step: no earlier operation's publish is owed.
            return stored.model_copy(update={"parked": False, "queued_by": None})
        case events.FanOutStarted(token=token, state=state):
            return fan_out.started(stored, token, state)
        case events.ChildEnded(position=position):
            return fan_out.child_ended(stored, position)
        case events.TurnCame():
            return fan_out.turn_came(stored)
        case events.WaitForSlot():
            return flow.wait_for_slot(stored, event)
        case events.SlotGranted():
            return flow.slot_granted(stored)
        case events.ParkedChecked():
            return flow.parked_checked(stored)
    raise TypeError(f"Not a lifecycle event: {event!r}")


def already_written(stored: Job, event: Event) -> bool:
    """Whether `stored` holds what `event` writes already: its claim or its outcome carries
    the event's token, so an earlier try of this very write went through (its reply was
    lost). Tokens are unique per step run, so no other run's write matches."""
    match event:
        case events.Claim(token=token):
            return stored.claim == token
        case events.Finish(token=token):
            return stored.finished_by == token
        case events.Release() | events.Signalled() | events.RetryRequested():
            return stored.queued_by == event.mark
    return False


def moved_on_from(stored: Job, event: Event) -> bool:
    """Whether `stored` went on past the outcome `event` writes, which an earlier try of this
    very write stored (its reply was lost): the next step, whose message went with that write,
    already ran. The record still holds the run's timing (the times are this run's own)."""
    if not isinstance(event, events.Finish):
        return False
    ran = event.after.timings[-1:]
    return (
        bool(ran)
        and stored.steps_completed >= event.after.steps_completed
        and stored.finished_by != event.token
        and ran[0] in stored.timings
    )


def queued_by(stored: Job, kind: str) -> bool:
    """Whether an operation of `kind` (`retry`, `signal <name>`, `release`) queued the job and
    its publish is not known to be done (no `Published` since, no step run claimed it): its
    caller may have died between the two, and asking again finishes it."""
    mark = stored.queued_by
    return mark is not None and mark.rsplit(" ", 1)[0] == kind


def _harmed_by(stored: Job, rejected: events.MessageRejected, now: datetime) -> bool:
    """Whether a rejected message may fail the job: only a live job still at the point the
    message was sent, at the step the message was for, and held by no live claim."""
    if stored.is_final or stored.status is S.SCHEDULED:
        return False
    hop = rejected.steps_completed
    if hop is not None and stored.steps_completed != hop:
        return False
    task_name = rejected.task_name
    if task_name is None:
        return True
    if stored.current_step_name is None:  # stored before steps were named
        at_step = task_name.startswith(step_task_name(stored.workflow_name, ""))
    else:
        at_step = task_name == step_task_name(stored.workflow_name, stored.current_step_name)
    held = stored.claim is not None and stored.lease_until is not None and stored.lease_until > now
    return at_step and not held


def _release(stored: Job, release: events.Release, now: datetime) -> Job | None:
    if stored.status is not S.SCHEDULED:
        return None  # cancelled, or released by a concurrent run
    if fan_out.waits_for_children(stored):
        return fan_out.recheck(stored, now)
    if stored.wait is not None:
        woken = waiting.wake(stored, now)
        if woken is None or woken.status is not S.QUEUED:
            return woken
        return woken.model_copy(update=marked(release, now))
    if stored.requested_start_time is not None and stored.requested_start_time > now:
        return None  # never before its time, whatever the index says
    if stored.deadline_passed(now):
        return stored.expired()
    parked = stored.workflow_name in release.paused
    if parked:  # no message to publish: resuming the workflow publishes it
        return stored.model_copy(
            update={"status": S.QUEUED, "parked": True, "queued_by": release.mark}
        )
    return stored.model_copy(update={"status": S.QUEUED, **marked(release, now)})


def _retry(stored: Job, retry: events.RetryRequested, now: datetime) -> Job | None:
    if stored.status not in RETRYABLE_STATUSES:
        return None
    start = stored.requested_start_time
    errors = stored.errors if stored.error is None else [*stored.errors, stored.error]
    status = S.SCHEDULED if start is not None and start > now else S.QUEUED
    wait = stored.wait
    if wait is not None and (wait.children is not None or wait.turn_of is not None):
        status, wait = fan_out.retried(stored, wait, now)
    elif wait is not None:  # it stopped while waiting: it waits again
        wait, status = waiting.again(wait, now), S.SCHEDULED
    return stored.model_copy(
        update={
            # The step it stopped at is current_step_name, its input `input_value`: both were
            # left as they were when it stopped, so no completed step runs again.
            "status": status,
            "wait": wait,
            "error": None,
            "errors": errors,
            "retries": stored.retries + 1,
            "finished_at": None,
            "claim": None,
            "lost_runs": 0,
            "republished": 0,
            "parked": False,
            # Only a retry that queues the job has a publish to finish.
            **(
                marked(retry, now)
                if status is S.QUEUED
                else {"queued_by": None, "lease_until": None}
            ),
        }
    )


def _claim(stored: Job, claim: events.Claim, now: datetime) -> Job | None:
    if stored.workflow_name != claim.workflow_name:
        return None
    if stored.steps_completed != claim.steps_completed or not _at(stored, claim.step_name):
        return None
    status = stored.status
    if status is S.CANCELLING:
        return _set(stored, S.CANCELLED)
    lost_runs = stored.lost_runs
    if status is S.RUNNING:
        held = stored.claim is not None
        if held and leased(stored, now):
            # Its worker renews the lease while the step runs: whatever the message says
            # (a redelivered copy, a retry's countdown restored by the broker), never twice.
            return None
        if held:  # its worker stopped renewing the lease without an outcome: it was lost
            lost_runs += 1
        if lost_runs >= claim.max_attempts:
            message = (
                f"Step {claim.step_name!r} was started {lost_runs} times and its worker was "
                "lost each time (killed, out of memory, or os._exit); it is not started again"
            )
            return _fail(stored, "WorkerLost", message, claim.step_name)
    elif status is S.QUEUED:
        if stored.steps_completed == 0 and stored.deadline_passed(now):
            return stored.expired()
    else:
        return None
    return stored.model_copy(
        update={
            "status": S.RUNNING,
            "current_step": claim.step_index,
            "current_step_name": claim.step_name,
            "workflow_version": claim.workflow_version,
            "claim": claim.token,
            "lease_until": claim.lease_until,
            "lost_runs": lost_runs,
            "attempt": stored.attempt + 1,
            "started_at": stored.started_at or now,
            "step_started_at": now,
            "queued_by": None,
        }
    )


def leased(stored: Job, now: datetime) -> bool:
    """Whether the job's lease has not expired at `now`: a step run holds it, or a Celery
    `retry()` of its step waits for its countdown."""
    return stored.lease_until is not None and stored.lease_until > now


def _finish(stored: Job, token: str, after: Job, now: datetime) -> Job | None:
    if stored.status not in RUNNING_STATUSES or stored.claim != token:
        return None  # another run took the job over, or this outcome is already stored
    # Signals that came while the step ran are kept (a step never changes them).
    after = waiting.begin(after.model_copy(update={"signals": stored.signals}), now)
    after = fan_out.kept_counts(stored, after)
    if stored.status is S.CANCELLING and fan_out.waits_for_children(after):
        after = fan_out.cancelled(after)  # its children are cancelled after this write
    elif stored.status is S.CANCELLING and after.status in (S.QUEUED, S.SCHEDULED):
        after = _set(after, S.CANCELLED)
    return after.model_copy(
        update={
            "claim": None,
            "lease_until": None,
            "lost_runs": 0,
            "republished": 0,
            "finished_by": token,
        }
    )


def _recover(stored: Job, recover: events.Recover, now: datetime) -> Job | None:
    seen = recover.seen
    # Only if nothing moved since it was seen idle: a job that progressed is left alone, and
    # so is a step whose worker still renews its lease (only its time limit ends it).
    if (stored.status, stored.steps_completed, stored.attempt) != (
        seen.status,
        seen.steps_completed,
        seen.attempt,
    ) or stored.status not in ACTIVE_STATUSES:
        return None
    if leased(stored, now):
        return None
    where = f"{stored.status.name} at step {_step_label(stored)}"
    idle = f"{recover.idle_seconds:g} s"
    done = f"after {stored.steps_completed} steps"
    note = f"{now.isoformat()} {recover.action}: {where} {done}, idle {idle}"
    if stored.status is S.PENDING:
        # Only django-db indexes PENDING jobs, and there a readable one was committed: the
        # hook that hands it over never ran (an earlier on_commit hook raised). Hand it over.
        start = stored.requested_start_time
        changed = _set(stored, S.SCHEDULED if start is not None and start > now else S.QUEUED)
        note = f"{now.isoformat()} hand over: committed, PENDING {done}, idle {idle}"
    elif stored.status is S.CANCELLING:
        changed = _set(stored, S.CANCELLED)
    elif recover.action == "fail":
        changed = _fail(stored, "StuckJob", f"No progress {where} for {idle}")
    elif stored.claim is None:
        # QUEUED, or RUNNING with its claim given back for a Celery retry: its message may
        # wait behind a backlog as well as be lost. Publishing it again costs a duplicate the
        # claim drops, and is not a run of the step (never a WorkerLost); each time, the
        # sweep leaves it alone twice as long before the next (no storm behind a backlog).
        times = stored.republished
        unit = recover.idle_seconds if recover.stuck_after is None else recover.stuck_after
        hold = unit * (2 ** min(times, _MAX_DOUBLINGS) - 1)
        changed = stored.model_copy(
            update={
                "status": S.QUEUED,
                "lease_until": now + timedelta(seconds=hold) if hold > 0 else None,
                "republished": times + 1,
            }
        )
        note = f"{now.isoformat()} republish: {where} {done}, idle {idle}"
    elif stored.lost_runs + 1 >= recover.max_attempts:
        message = (
            f"The step's worker stopped renewing its lease {stored.lost_runs + 1} times "
            f"without the step finishing ({where}); it is not requeued again"
        )
        changed = _fail(stored, "WorkerLost", message)
    else:
        changed = stored.model_copy(
            update={
                "status": S.QUEUED,
                "claim": None,
                "lease_until": None,
                "lost_runs": stored.lost_runs + 1,
            }
        )
    return changed.model_copy(
        update={"recoveries": [*stored.recoveries[1 - KEPT_RECOVERIES :], note]}
    )


def _at(stored: Job, step_name: str) -> bool:
    # Jobs stored before steps were named carry only the index; those compare as before.
    return stored.current_step_name is None or stored.current_step_name == step_name


def _step_label(job: Job) -> str:
    return repr(job.current_step_name) if job.current_step_name else f"#{job.current_step}"


def _set(job: Job, status: JobStatus) -> Job:
    return job.model_copy(update={"status": status})


def _fail(job: Job, kind: str, message: str, step: str | None = None) -> Job:
    return _failed(job, JobError(type=kind, message=message, step=step))


def _failed(job: Job, error: JobError) -> Job:
    return job.model_copy(
        update={"status": S.FAILED, "error": error, "claim": None, "lease_until": None}
    )
