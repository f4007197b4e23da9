"""What Celery beat drives: releasing due scheduled jobs, and periodic job submissions."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .job import Job, JobError
from .job_status import JobStatus

if TYPE_CHECKING:
    from .binding import ErgateCelery

logger = logging.getLogger("ergate_celery")

RELEASE_TASK = "ergate.release_scheduled_jobs"
RECOVER_TASK = "ergate.recover_stuck_jobs"
SUBMIT_TASK = "ergate.submit_job"


def release_due_jobs(ergate: ErgateCelery, now: datetime | None = None) -> int:
    """Release every SCHEDULED job due at `now`; returns how many this call released.

    Each job is claimed by a compare-and-set from SCHEDULED to QUEUED (which also moves it
    out of the scheduled index), so overlapping runs and several beat processes release a
    job once.
    """
    batch = ergate.settings.release_batch_size
    released = 0
    while True:
        moment = now or datetime.now(UTC)
        due = ergate.store.due(moment, batch)
        released_now = sum(_release_one(ergate, job_id, moment) for job_id in due)
        released += released_now
        if len(due) < batch or released_now == 0:
            return released


def _release_one(ergate: ErgateCelery, job_id: str, now: datetime) -> int:
    claimed = ergate.store.update(job_id, lambda stored: _release(stored, now))
    if claimed is None:
        return 0
    if claimed.status is not JobStatus.QUEUED:
        logger.warning("Scheduled job %s passed its deadline before release", job_id)
        return 0
    ergate.publish(claimed)
    return 1


def _release(stored: Job, now: datetime) -> Job | None:
    if stored.status is not JobStatus.SCHEDULED:
        return None  # cancelled, or released by a concurrent run
    if stored.requested_start_time is not None and stored.requested_start_time > now:
        return None  # never before its time, whatever the index says
    if stored.deadline_passed(now):
        return stored.expired()
    return stored.model_copy(update={"status": JobStatus.QUEUED})


def recover_stuck_jobs(ergate: ErgateCelery, now: datetime | None = None) -> int:
    """Requeue or fail every job idle in QUEUED/RUNNING/CANCELLING past `stuck_after`."""
    settings = ergate.settings
    moment = now or datetime.now(UTC)
    recovered = 0
    for job_id in ergate.store.stale(moment - timedelta(seconds=settings.stuck_after), 1000):
        seen = ergate.store.get(job_id)
        if seen is None or seen.status not in _STUCK:
            continue
        recovered += _recover(ergate, seen, settings.stuck_action, moment)
    return recovered


_STUCK = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)


def _recover(ergate: ErgateCelery, seen: Job, action: str, now: datetime) -> int:
    step = f"step #{seen.current_step} (after {seen.steps_completed} steps)"
    update: dict[str, Any]
    if seen.status is JobStatus.CANCELLING:
        action, update = "cancel", {"status": JobStatus.CANCELLED}
    elif action == "fail":
        update = {
            "status": JobStatus.FAILED,
            "error": JobError(
                type="StuckJob",
                message=f"No progress in {seen.status.name} at {step} for "
                f"{ergate.settings.stuck_after:g} s",
            ),
        }
    else:
        update = {"status": JobStatus.QUEUED}
    note = f"{now.isoformat()} {action}: {seen.status.name} at {step} without progress"

    def change(stored: Job) -> Job | None:
        # Only if nothing moved since it was seen idle: a job that progressed is left alone.
        unchanged = (stored.status, stored.steps_completed, stored.attempt) == (
            seen.status,
            seen.steps_completed,
            seen.attempt,
        )
        if not unchanged:
            return None
        return stored.model_copy(update={**update, "recoveries": [*stored.recoveries, note]})

    recovered = ergate.store.update(str(seen.id), change)
    if recovered is None:
        return 0
    logger.warning("Stuck job %s: %s", seen.id, note)
    if recovered.status is JobStatus.QUEUED:
        ergate.publish(recovered)
    return 1


def install(ergate: ErgateCelery) -> None:
    """Register the beat-driven tasks, and the release entry in `beat_schedule`."""
    app = ergate.app

    def release_scheduled_jobs() -> int:
        return release_due_jobs(ergate)

    def recover_stuck() -> int:
        return recover_stuck_jobs(ergate)

    def submit_job(
        workflow_name: str, initial_input_value: Any = None, user_context: Any = None
    ) -> str:
        job = ergate.submit_job(
            workflow_name, initial_input_value=initial_input_value, user_context=user_context
        )
        return str(job.id)

    options: dict[str, Any] = {"shared": False, "lazy": False}
    app.task(name=RELEASE_TASK, ignore_result=True, **options)(release_scheduled_jobs)  # type: ignore[no-untyped-call]
    app.task(name=RECOVER_TASK, ignore_result=True, **options)(recover_stuck)  # type: ignore[no-untyped-call]
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
            app.conf.beat_schedule[RECOVER_TASK] = {
                "task": RECOVER_TASK,
                "schedule": settings.stuck_check_interval,
                "options": {"expires": settings.stuck_check_interval},
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
