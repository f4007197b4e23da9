"""What Celery beat drives: the release and sweep tasks and their entries, periodic jobs.

The binding installs them with what they work with (its `Runtime`, its settings, its
`submit_job`), handed in as functions because those are made at first use, after the app
is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from celery import Celery, Task
from celery.schedules import schedule as interval_schedule

from ergate_celery.model.job import Job
from ergate_celery.model.workflow import Workflow
from ergate_celery.operations.submission import new_job
from ergate_celery.scheduling import index_schedule, release, sweep
from ergate_celery.scheduling.firing import FiringTask, firing_id
from ergate_celery.scheduling.index_schedule import IndexSchedule
from ergate_celery.scheduling.release import RELEASE_TASK
from ergate_celery.scheduling.sweep import RECOVER_TASK
from ergate_celery.settings import ErgateSettings
from ergate_celery.stores.base import ACTIVE, SCHEDULED
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)

SUBMIT_TASK = "ergate.submit_job"


class Bound(Protocol):
    """What the two helpers below take: an `ErgateCelery`, or anything with its runtime."""

    @property
    def runtime(self) -> Runtime:
        """The binding's runtime."""
        ...


def release_due_jobs(ergate: Bound, now: datetime | None = None) -> int:
    """Release every SCHEDULED job of `ergate`'s app due at `now`; returns how many."""
    return release.release_due_jobs(ergate.runtime, now)


def recover_stuck_jobs(ergate: Bound, now: datetime | None = None) -> int:
    """Requeue or fail every job of `ergate`'s app idle past `ergate_stuck_after`."""
    return sweep.recover_stuck_jobs(ergate.runtime, now)


def install(
    app: Celery,
    runtime: Callable[[], Runtime],
    settings: Callable[[], ErgateSettings],
    submit: Callable[..., Job],
) -> None:
    """Register the beat-driven tasks, and their entries in `beat_schedule`."""
    index_schedule.serve(app, lambda: runtime().store)

    def release_scheduled_jobs() -> int:
        return release.release_due_jobs(runtime())

    def recover_stuck() -> int:
        return sweep.recover_stuck_jobs(runtime())

    def submit_job(
        task: Task,  # type: ignore[type-arg]
        workflow_name: str,
        initial_input_value: Any = None,
        user_context: Any = None,
        entry: str | None = None,
        every: float | None = None,
        fired_at: str | None = None,
    ) -> str:
        job_id = None
        if fired_at is not None:
            # django-celery-beat names its entry in a header; Celery's beat entries carry it.
            headers = task.request.headers or {}
            name = entry or headers.get("periodic_task_name") or workflow_name
            job_id = firing_id(str(name), fired_at, every)
        job = submit(
            workflow_name,
            initial_input_value=initial_input_value,
            user_context=user_context,
            id=job_id,
            if_exists="return",
        )
        return str(job.id)

    options: dict[str, Any] = {"shared": False, "lazy": False}
    app.task(name=RELEASE_TASK, ignore_result=True, **options)(release_scheduled_jobs)  # type: ignore[no-untyped-call]
    app.task(name=RECOVER_TASK, ignore_result=True, **options)(recover_stuck)  # type: ignore[no-untyped-call]
    app.task(name=SUBMIT_TASK, base=FiringTask, bind=True, **options)(submit_job)  # type: ignore[no-untyped-call]

    def add_entries() -> None:
        conf = settings()
        if conf.beat_enabled:
            interval = conf.schedule_interval
            # Each entry fires only when its index holds due work: no task while idle.
            app.conf.beat_schedule[RELEASE_TASK] = {
                "task": RELEASE_TASK,
                "schedule": IndexSchedule(SCHEDULED, interval, app=app),
                # With no worker up, stale release messages expire instead of piling up.
                "options": {"expires": max(10 * interval, 30.0)},
            }
            stuck = IndexSchedule(ACTIVE, conf.stuck_check_interval, age=conf.stuck_after, app=app)
            app.conf.beat_schedule[RECOVER_TASK] = {
                "task": RECOVER_TASK,
                "schedule": stuck,
                "options": {"expires": conf.stuck_check_interval},
            }

    when_configured(app, add_entries)


def when_configured(app: Celery, action: Callable[[], None]) -> None:
    """Run `action` now if `app` is configured, else once it is (its settings are read)."""
    if getattr(app, "configured", False):
        action()
    else:
        app.on_after_configure.connect(lambda **kwargs: action(), weak=False)


def periodic_entry(
    workflow_name: str,
    schedule: Any,
    *,
    initial_input_value: Any = None,
    user_context: Any = None,
    entry: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """A `beat_schedule` entry that submits a new job of `workflow_name` at each firing; its
    id says which firing (`<entry>@<scheduled time>`, see `firing.py`), so no firing is
    submitted twice. `entry` is the entry's name in `beat_schedule`.

    Its messages show logs and Flower the workflow's name, not the input and user context
    (they may hold personal data), unless `options` say otherwise (`ergate_show_task_args`
    gives `argsrepr=None`, Celery's own repr)."""
    kwargs: dict[str, Any] = {
        "initial_input_value": initial_input_value,
        "user_context": user_context,
    }
    if entry is not None:
        kwargs["entry"] = entry
    every = _every(schedule)
    if every is not None:
        kwargs["every"] = every
    shown = {
        "argsrepr": repr((workflow_name,)),
        "kwargsrepr": "{initial_input_value and user_context redacted}",
    }
    return {
        "task": SUBMIT_TASK,
        "schedule": schedule,
        "args": (workflow_name,),
        "kwargs": kwargs,
        "options": {**shown, **options},
    }


def _every(schedule: Any) -> float | None:
    """The period of an interval schedule in seconds (None: a crontab or another kind)."""
    if type(schedule) is interval_schedule:
        return float(schedule.seconds)
    if isinstance(schedule, timedelta):
        return schedule.total_seconds()
    if isinstance(schedule, int | float) and not isinstance(schedule, bool):
        return float(schedule)
    return None


def add_periodic_job(
    app: Celery,
    workflow: Workflow,
    schedule: Any,
    *,
    name: str | None,
    initial_input_value: Any,
    user_context: Any,
) -> str:
    """`ErgateCelery.add_periodic_job`: check the input now, then add the beat entry."""
    new_job(
        workflow,
        initial_input_value=initial_input_value,
        user_context=user_context,
        requested_start_time=None,
        job_id=None,
        now=datetime.now(UTC),
    )
    workflow_name = workflow.unique_name
    key = name or f"ergate: {workflow_name} every {schedule}"

    def add() -> None:
        shown = ErgateSettings.from_conf(app.conf).show_task_args
        app.conf.beat_schedule[key] = periodic_entry(
            workflow_name,
            schedule,
            initial_input_value=initial_input_value,
            user_context=user_context,
            entry=key,
            **({"argsrepr": None, "kwargsrepr": None} if shown else {}),
        )

    when_configured(app, add)
    return key
