"""What Celery beat drives: the release and sweep tasks and their entries, periodic jobs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ergate_celery.operations.submission import new_job
from ergate_celery.scheduling import release, sweep
from ergate_celery.scheduling.index_schedule import IndexSchedule
from ergate_celery.scheduling.release import RELEASE_TASK
from ergate_celery.scheduling.sweep import RECOVER_TASK
from ergate_celery.stores.base import ACTIVE, SCHEDULED

if TYPE_CHECKING:
    from ergate_celery.binding import ErgateCelery

logger = logging.getLogger("ergate_celery")

SUBMIT_TASK = "ergate.submit_job"


def release_due_jobs(ergate: ErgateCelery, now: datetime | None = None) -> int:
    """Release every SCHEDULED job of `ergate`'s app due at `now`; returns how many."""
    return release.release_due_jobs(ergate.runtime, now)


def recover_stuck_jobs(ergate: ErgateCelery, now: datetime | None = None) -> int:
    """Requeue or fail every job of `ergate`'s app idle past `ergate_stuck_after`."""
    return sweep.recover_stuck_jobs(ergate.runtime, now)


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
            # Each entry fires only when its index holds due work: no task while idle.
            app.conf.beat_schedule[RELEASE_TASK] = {
                "task": RELEASE_TASK,
                "schedule": IndexSchedule(SCHEDULED, interval, app=app),
                # With no worker up, stale release messages expire instead of piling up.
                "options": {"expires": max(10 * interval, 30.0)},
            }
            stuck = IndexSchedule(
                ACTIVE, settings.stuck_check_interval, age=settings.stuck_after, app=app
            )
            app.conf.beat_schedule[RECOVER_TASK] = {
                "task": RECOVER_TASK,
                "schedule": stuck,
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


def add_periodic_job(
    ergate: ErgateCelery,
    workflow_name: str,
    schedule: Any,
    *,
    name: str | None,
    initial_input_value: Any,
    user_context: Any,
) -> str:
    """`ErgateCelery.add_periodic_job`: check the input now, then add the beat entry."""
    new_job(
        ergate.workflow(workflow_name),
        initial_input_value=initial_input_value,
        user_context=user_context,
        requested_start_time=None,
        job_id=None,
        now=datetime.now(UTC),
    )
    entry = periodic_entry(
        workflow_name,
        schedule,
        initial_input_value=initial_input_value,
        user_context=user_context,
    )
    key = name or f"ergate: {workflow_name} every {schedule}"

    def add(**kwargs: Any) -> None:
        ergate.app.conf.beat_schedule[key] = entry

    if getattr(ergate.app, "configured", False):
        add()
    else:
        ergate.app.on_after_configure.connect(add, weak=False)
    return key
