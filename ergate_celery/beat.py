"""What Celery beat drives: releasing due scheduled jobs, and periodic job submissions."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .job import Job
from .job_status import JobStatus

if TYPE_CHECKING:
    from .binding import ErgateCelery

logger = logging.getLogger("ergate_celery")

RELEASE_TASK = "ergate.release_scheduled_jobs"
SUBMIT_TASK = "ergate.submit_job"


def release_due_jobs(ergate: ErgateCelery, now: datetime | None = None) -> int:
    """Release every SCHEDULED job due at `now`; returns how many this call released.

    Each job is claimed by a compare-and-set from SCHEDULED to QUEUED, so overlapping runs
    and several beat processes release a job once.
    """
    store = ergate.store
    batch = ergate.settings.release_batch_size
    released = 0
    while True:
        moment = now or datetime.now(UTC)
        due = store.due(moment, batch)
        for job_id in due:
            released += _release_one(ergate, job_id, moment)
        if len(due) < batch:
            return released


def _release_one(ergate: ErgateCelery, job_id: str, now: datetime) -> int:
    seen: list[Job] = []
    claimed = ergate.store.update(job_id, lambda stored: _release(stored, now, seen))
    if claimed is None and seen and seen[-1].status is JobStatus.SCHEDULED:
        return 0  # not due after all: it stays in the index
    ergate.store.unschedule(job_id)
    if claimed is None:
        return 0
    if claimed.status is not JobStatus.QUEUED:
        logger.warning("Scheduled job %s passed its deadline before release", job_id)
        return 0
    ergate.publish(claimed)
    return 1


def _release(stored: Job, now: datetime, seen: list[Job]) -> Job | None:
    seen.append(stored)
    if stored.status is not JobStatus.SCHEDULED:
        return None  # cancelled, or released by a concurrent run
    if stored.requested_start_time is not None and stored.requested_start_time > now:
        return None  # never before its time, whatever the index says
    if stored.deadline_passed(now):
        return stored.expired()
    return stored.model_copy(update={"status": JobStatus.QUEUED})


def install(ergate: ErgateCelery) -> None:
    """Register the beat-driven tasks, and the release entry in `beat_schedule`."""
    app = ergate.app

    def release_scheduled_jobs() -> int:
        return release_due_jobs(ergate)

    def submit_job(
        workflow_name: str, initial_input_value: Any = None, user_context: Any = None
    ) -> str:
        job = ergate.submit_job(
            workflow_name, initial_input_value=initial_input_value, user_context=user_context
        )
        return str(job.id)

    options: dict[str, Any] = {"shared": False, "lazy": False}
    app.task(name=RELEASE_TASK, ignore_result=True, **options)(release_scheduled_jobs)  # type: ignore[no-untyped-call]
    app.task(name=SUBMIT_TASK, **options)(submit_job)  # type: ignore[no-untyped-call]

    def add_entry(**kwargs: Any) -> None:
        settings = ergate.settings
        if settings.beat_enabled:
            interval = settings.schedule_interval
            app.conf.beat_schedule[RELEASE_TASK] = {
                "task": RELEASE_TASK,
                "schedule": interval,
                # With no worker up, stale release messages expire instead of piling up.
                "options": {"expires": max(10 * interval, 30.0)},
            }

    if getattr(app, "configured", False):
        add_entry()
    else:
        app.on_after_configure.connect(add_entry, weak=False)


def periodic_entry(
    workflow_name: str,
    schedule: Any,
    *,
    initial_input_value: Any = None,
    user_context: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """A `beat_schedule` entry that submits a new job of `workflow_name` at each firing."""
    return {
        "task": SUBMIT_TASK,
        "schedule": schedule,
        "args": (workflow_name,),
        "kwargs": {"initial_input_value": initial_input_value, "user_context": user_context},
        "options": options,
    }
