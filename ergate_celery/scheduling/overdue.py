"""Scheduled jobs that nobody released: the hint that beat is not running.

A SCHEDULED job is released by `celery beat` at most about `ergate_schedule_interval` after
it is due: its `requested_start_time`, the end of its `Sleep`, or its signal wait's timeout.
One still SCHEDULED several intervals later is overdue: the CLI (`list`, `show`, `watch`,
`--json`), the console and the example's pages say so, and every worker checks the head of
the scheduled index (one entry) at that grace period and logs one WARNING while due jobs wait.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery, bootsteps

from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.settings import ErgateSettings
from ergate_celery.stores.base import SCHEDULED
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)


def grace(settings: ErgateSettings) -> float:
    """Seconds past its start time after which a SCHEDULED job counts as overdue."""
    return max(5 * settings.schedule_interval, 2.0)


def due_at(job: Job) -> datetime | None:
    """When beat should release the SCHEDULED job: the end of its wait (a sleep's end, a
    signal's timeout; None for a signal waited for forever), else its start time."""
    if job.status is not JobStatus.SCHEDULED:
        return None
    if job.wait is not None:
        return job.wait.until
    return job.requested_start_time


def overdue_by(job: Job, settings: ErgateSettings, now: datetime | None = None) -> float | None:
    """Seconds the job is past its due time while still SCHEDULED (beyond the grace)."""
    due = due_at(job)
    if due is None:
        return None
    late = ((now or datetime.now(UTC)) - due).total_seconds()
    return late if late > grace(settings) else None


def overdue_note(job: Job, settings: ErgateSettings, now: datetime | None = None) -> str | None:
    """`overdue by N s — is celery beat running?` (saying what ended for a wait), or None."""
    late = overdue_by(job, settings, now)
    if late is None:
        return None
    what = ""
    if job.wait is not None:
        what = " (its signal wait timed out)" if job.wait.signal else " (its sleep ended)"
    return f"overdue by {late:.0f} s{what} — is celery beat running?"


class OverdueWatch(bootsteps.StartStopStep):
    """A worker bootstep: warn once when due jobs wait unreleased, again after they cleared.

    `install` adds a subclass of it to an app's workers, with the app's `runtime`.
    """

    requires = ("celery.worker.components:Timer",)
    #: The runtime whose store and settings the watch reads (given by `install`).
    runtime: Callable[[], Runtime]

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.timer_ref: Any = None
        self.warned = False

    def start(self, worker: Any) -> None:
        """Look now, then every few intervals."""
        try:
            every = grace(self.runtime().settings)
        except Exception as exc:
            logger.debug("No overdue watch: the settings cannot be read (%r)", exc)
            return
        self.check()
        self.timer_ref = worker.timer.call_repeatedly(every, self.check)

    def stop(self, worker: Any) -> None:
        """Stop looking."""
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    def check(self) -> None:
        """Log one WARNING when the earliest scheduled job is overdue."""
        try:
            rt = self.runtime()
            now = rt.clock()
            head = rt.store.index_entries(SCHEDULED, now - timedelta(seconds=grace(rt.settings)), 1)
        except Exception as exc:
            logger.debug("Could not read the scheduled job index: %r", exc)
            return
        finally:
            _close_django_connections()
        if not head:
            self.warned = False
            return
        if not self.warned:
            late = (now - head[0].at).total_seconds()
            logger.warning(
                "Scheduled jobs are overdue (job %s by %.0f s) and nobody released them: is "
                "celery beat running? Start it with `celery -A <your app> beat`",
                head[0].job_id,
                late,
            )
            self.warned = True


def _close_django_connections() -> None:
    # The timer thread is no task: nothing else closes the Django connection it opened on
    # django-db, and a connection left open keeps e.g. a test database from being dropped.
    # A process may import Django without configuring it: then it opened no connection.
    if "django.db" in sys.modules:
        from django.conf import settings
        from django.db import connections

        if settings.configured:
            connections.close_all()


def install(app: Celery, runtime: Callable[[], Runtime]) -> None:
    """Add the overdue watch to the app's workers, reading the store and settings of
    `runtime()` (made at the worker's start, after the app is configured)."""
    watch = type(
        "OverdueWatch",
        (OverdueWatch,),
        {"__module__": __name__, "runtime": staticmethod(runtime)},
    )
    app.steps["worker"].add(watch)
