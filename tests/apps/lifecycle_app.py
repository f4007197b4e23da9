"""A Celery app for `celery -A tests.apps.lifecycle_app worker` subprocesses: steps that only a
real prefork worker can run to the end — past a hard time limit, or killing their process.

Configuration comes as JSON in ERGATE_TEST_CONF, as for `beat_app`. Every step start appends
a line `<step> <job id> <attempt> <pid>` to the file ERGATE_LIFECYCLE_MARKS, if set.
"""

from __future__ import annotations

import os
import time
from typing import Annotated

from ergate_celery import CurrentRun, StepRun, Workflow

from . import app_from_env

Run = Annotated[StepRun, CurrentRun()]


def mark(run: StepRun) -> None:
    """Append the start of `run` to the marks file (one O_APPEND write)."""
    path = os.environ.get("ERGATE_LIFECYCLE_MARKS")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{run.step_name} {run.job_id} {run.attempt} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def marks(path: str | os.PathLike[str]) -> list[list[str]]:
    """The marks written so far, as [step, job id, attempt, pid]."""
    try:
        with open(path) as fh:
            return [line.split(" ") for line in fh.read().splitlines()]
    except FileNotFoundError:
        return []


#: A step that overruns its hard time limit: Celery kills it after 2 s.
overrun = Workflow(unique_name="lifecycle_overrun")


@overrun.step(time_limit=2)
def hang(x: int, run: Run) -> int:
    mark(run)
    time.sleep(60)
    return x


@overrun.step
def never(x: int) -> int:
    return x


#: A step that kills its own worker process every time it runs (as an OOM kill would).
crash = Workflow(unique_name="lifecycle_crash")


@crash.step
def explode(x: int, run: Run) -> int:
    mark(run)
    os._exit(1)


app, ergate = app_from_env("lifecycle_app", overrun, crash)
