"""The one place that tells the world a job changed: signals, Celery events and a log line.

Every status change, whoever makes it, is announced here after it is stored, from the pair
(job before, job after), and handed to the observer when one is set (`observing.py`): which
signals go out follows from that pair alone, so a worker, beat, the sweep and `cancel_job` in
a web process announce alike. Announcing never fails the caller: a receiver, an observer or
an event publish that raises is logged and passed over.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.utils.dispatch import Signal

from ergate_celery import signals
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.worker import observing

logger = logging.getLogger(__name__)

#: The Celery event type sent with each lifecycle signal when worker events are on.
EVENT_TYPES: dict[Signal, str] = {
    signals.job_started: "ergate-job-started",
    signals.step_started: "ergate-step-started",
    signals.step_completed: "ergate-step-completed",
    signals.job_completed: "ergate-job-completed",
    signals.job_failed: "ergate-job-failed",
    signals.job_aborted: "ergate-job-aborted",
    signals.job_cancelled: "ergate-job-cancelled",
    signals.job_waiting: "ergate-job-waiting",
    signals.job_signalled: "ergate-job-signalled",
    signals.job_parked: "ergate-job-parked",
    signals.job_unparked: "ergate-job-unparked",
}
_FINAL_SIGNALS = {
    JobStatus.COMPLETED: signals.job_completed,
    JobStatus.FAILED: signals.job_failed,
    JobStatus.ABORTED: signals.job_aborted,
    JobStatus.CANCELLED: signals.job_cancelled,
}


def signals_for(before: Job | None, after: Job) -> list[Signal]:
    """The lifecycle signals a change from `before` to `after` sends, in order."""
    sent: list[Signal] = []
    claimed = after.status is JobStatus.RUNNING and after.claim is not None
    if claimed and (before is None or before.claim != after.claim):
        if before is None or before.started_at is None:
            sent.append(signals.job_started)
        sent.append(signals.step_started)
    if before is not None and before.claim is not None and after.finished_by == before.claim:
        sent.append(signals.step_completed)
    if before is not None and after.signals.keys() - before.signals.keys():
        sent.append(signals.job_signalled)
    waits = after.status is JobStatus.SCHEDULED and after.wait is not None
    if waits and (before is None or before.wait != after.wait):
        sent.append(signals.job_waiting)
    was_parked = before is not None and before.parked
    if after.parked and not was_parked:
        sent.append(signals.job_parked)
    if was_parked and not after.parked and after.status is JobStatus.QUEUED:
        sent.append(signals.job_unparked)
    if after.is_final and (before is None or not before.is_final):
        sent.append(_FINAL_SIGNALS[after.status])
    return sent


class Announcer:
    """Announces stored changes for one Celery app."""

    def __init__(self, app: Celery, events_enabled: bool) -> None:
        self.app = app
        #: Send Celery events too; follows the worker's -E / worker_send_task_events.
        self.events_enabled = events_enabled

    def __call__(self, before: Job | None, after: Job, sender: str, task: Any = None) -> None:
        """Announce the change from `before` to `after`, made by `sender`.

        `sender` is the step task's name when a step run made the change, else the task or
        function that made it (`ergate.release_scheduled_jobs`, `ergate.cancel_job`, ...).
        `task`, when given, is the running Celery task whose event dispatcher to use.
        """
        self._log(before, after, sender)
        observer = observing.observer
        if observer is not None:
            try:
                observer.changed(before, after, sender, task)
            except Exception:
                logger.exception("The observer failed on a change of job %s", after.id)
        for signal in signals_for(before, after):
            try:
                signal.send(sender=sender, job=after)
            except Exception:
                logger.exception(
                    "A receiver of %s failed for job %s", EVENT_TYPES[signal], after.id
                )
            if self.events_enabled:
                self._send_event(EVENT_TYPES[signal], before, after, task)

    def _log(self, before: Job | None, after: Job, sender: str) -> None:
        was = before.status.name if before is not None else "new"
        step = after.current_step_name or f"#{after.current_step}"
        if after.status is JobStatus.FAILED and after.error is not None:
            logger.error(
                "Job %s %s -> FAILED at step %s (%s): %s: %s",
                after.id,
                was,
                after.error.step or step,
                sender,
                after.error.type,
                after.error.message,
            )
            return
        # Final and cancelling changes are what an operator looks for; the step-to-step
        # QUEUED/RUNNING changes would double a busy worker's log, and so would the progress
        # a cancelling step still reports.
        cancelling = after.status is JobStatus.CANCELLING and (
            before is None or before.status is not JobStatus.CANCELLING
        )
        quiet = not after.is_final and not cancelling
        level = logging.DEBUG if quiet else logging.INFO
        logger.log(
            level, "Job %s %s -> %s at step %s (%s)", after.id, was, after.status.name, step, sender
        )

    def _send_event(self, event_type: str, before: Job | None, job: Job, task: Any) -> None:
        ran = before.current_step_name if before is not None and before.claim else None
        fields = {
            "job_id": job.id,
            "workflow": job.workflow_name,
            "step": ran or job.current_step_name,
            "status": job.status.name,
            "percent_completed": job.percent_completed,
        }
        try:
            if task is not None:
                task.send_event(event_type, **fields)
                return
            with self.app.events.default_dispatcher() as dispatcher:
                dispatcher.send(event_type, **fields)
        except Exception:
            # A broker blip while announcing must never strand the job that was just stored.
            logger.warning(
                "Could not send the %s event of job %s", event_type, job.id, exc_info=True
            )
