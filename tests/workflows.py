"""Small workflows many test modules use (they import nothing of Celery or a service)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from ergate_celery import AbortJob, Workflow


def echo_workflow(name: str, *steps: str) -> Workflow:
    """A workflow whose steps (named `steps`, or one named "only") each return their input."""
    return add_echo_steps(Workflow(unique_name=name), *(steps or ("only",)))


def add_echo_steps(workflow: Workflow, *steps: str) -> Workflow:
    """Add steps named `steps` to `workflow`, each returning its input."""
    for step in steps:

        def echo(x: Any) -> Any:
            return x

        echo.__name__ = echo.__qualname__ = step
        workflow.step(echo)
    return workflow


def fail_or_abort(x: str) -> str:
    """A step's body: input "fail" raises ValueError("card declined"), "abort" aborts the job,
    anything else is returned."""
    if x == "fail":
        raise ValueError("card declined")
    if x == "abort":
        raise AbortJob("nothing to ship")
    return x


def blocking_workflow(name: str, *after: str) -> tuple[Workflow, threading.Event, threading.Event]:
    """A workflow whose step "first" sets `started` and waits (a minute at most) for `release`,
    then steps `after` that return their input; with `started` and `release`."""
    started, release = threading.Event(), threading.Event()
    workflow = Workflow(unique_name=name)

    @workflow.step
    def first(x: Any) -> Any:
        started.set()
        assert release.wait(60)
        return x

    return add_echo_steps(workflow, *after), started, release


def counting_workflow(name: str, runs: Counter[str], first_sleep: float = 0.0) -> Workflow:
    """Three steps that count their runs in this process."""
    workflow = Workflow(unique_name=name)
    lock = threading.Lock()

    def count(step: str) -> None:
        with lock:
            runs[step] += 1

    @workflow.step
    def a(x: int) -> int:
        count("a")
        time.sleep(first_sleep)
        return x + 1

    @workflow.step
    def b(x: int) -> int:
        count("b")
        return x * 2

    @workflow.step
    def c(x: int) -> int:
        count("c")
        return x - 1

    return workflow
