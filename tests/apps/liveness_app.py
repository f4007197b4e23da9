"""A Celery app for `celery -A tests.apps.liveness_app worker` subprocesses of the liveness
tests: steps whose worker is alive while their message misleads (a retry's countdown or a
prefetched message restored by Redis), steps that report the same progress for a long time,
steps that hang, a backlog, and a step whose time limit is far shorter than its lease. Every
step run appends a line to ERGATE_FAULT_MARKS (see `fault_app.mark`), so a test counts the
starts of each step.
"""

from __future__ import annotations

import contextlib
import time
from typing import Annotated

from celery.exceptions import SoftTimeLimitExceeded

from ergate_celery import CurrentRun, Progress, ProgressReporter, StepRun, Workflow

from . import app_from_env
from .fault_app import mark

Run = Annotated[StepRun, CurrentRun()]

#: How long the steps that outlive a Redis visibility timeout (or a lease) run, in seconds.
LONG_STEP = 4.0


class FlakyError(Exception):
    """The first run of `flaky` fails with this; Celery retries it after a countdown."""


# A step retried by Celery after a countdown longer than Redis' visibility timeout: the
# message waiting for its countdown is restored, and copies come back marked redelivered.
retried = Workflow(unique_name="live_retry")


@retried.step(autoretry_for=(FlakyError,), retry_backoff=3, retry_jitter=False, max_retries=2)
def flaky(x: int, run: Run) -> int:
    mark(run)
    if run.attempt == 1:
        raise FlakyError("the first run fails")
    time.sleep(LONG_STEP)
    return x + 1


@retried.step
def after_flaky(x: int, run: Run) -> int:
    mark(run)
    return x * 2


# A long step reporting the same fraction again and again: its worker lives all along.
steady = Workflow(unique_name="live_steady")


@steady.step
def crunch(x: int, run: Run, progress: Annotated[ProgressReporter, Progress()]) -> int:
    mark(run)
    deadline = time.monotonic() + LONG_STEP
    while time.monotonic() < deadline:
        progress.report(25.0)
        time.sleep(0.2)
    return x + 1


# A step that hangs (input "hang") while its worker lives; only a time limit ends it.
hung = Workflow(unique_name="live_hang")


@hung.step
def hangs(x: str, run: Run) -> str:
    mark(run)
    if x == "hang":
        time.sleep(3600)
    return x


# One short step, for a backlog behind a single slot.
backlog = Workflow(unique_name="live_backlog")


@backlog.step
def work(x: int, run: Run) -> int:
    mark(run)
    time.sleep(0.5)
    return x


# A step whose soft time limit is far shorter than the lease, and whose first run outlives that
# limit (it lets it pass) until the test kills its worker: a redelivered copy can watch the
# lease for three quarters of the limit only, far less than the lease has left.
limited = Workflow(unique_name="live_limited")
#: `limited`'s soft time limit, in seconds.
SHORT_LIMIT = 2.0


@limited.step(soft_time_limit=SHORT_LIMIT)
def bounded(x: int, run: Run) -> int:
    mark(run)
    if run.attempt == 1:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(SoftTimeLimitExceeded):
                time.sleep(0.1)
    return x + 1


app, ergate = app_from_env("liveness_app", retried, steady, hung, backlog, limited)
