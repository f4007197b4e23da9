"""Waiting workflows, and a Celery app for `celery -A tests.apps.waiting_app worker|beat`
subprocesses of the waiting tests (its configuration comes in ERGATE_TEST_CONF).

- ERGATE_WAIT_KILL: a file path; the first run of `approval.ask` that raised WaitForSignal
  SIGKILLs its own worker process and creates that file. With ERGATE_WAIT_KILL_AT=stored it
  does so right after the wait is stored (from `job_waiting`); otherwise right after the step
  raised, before its outcome is stored (from a dependency's teardown).
- ERGATE_WAIT_MARKS: a file to which every run of `ask` appends a line.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Annotated, Any

from ergate_celery import (
    Depends,
    SignalPayload,
    Sleep,
    WaitForSignal,
    WaitPath,
    Workflow,
)
from ergate_celery import signals as ergate_signals

from . import app_from_env

approval = Workflow(unique_name="approval")


def _kill_once(when: str) -> None:
    flag = os.environ.get("ERGATE_WAIT_KILL")
    if not flag or os.environ.get("ERGATE_WAIT_KILL_AT", "raised") != when:
        return
    try:
        os.close(os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _teardown_kills() -> Iterator[None]:
    # Runs after the step raised WaitForSignal and before its outcome is stored.
    try:
        yield
    finally:
        _kill_once("raised")


@approval.step(paths=[WaitPath("approved")])
def ask(order: dict[str, Any], _: Annotated[None, Depends(_teardown_kills)]) -> dict[str, Any]:
    marks = os.environ.get("ERGATE_WAIT_MARKS")
    if marks:
        with open(marks, "a") as fh:
            fh.write(f"{os.getpid()}\n")
    raise WaitForSignal("approved", timeout=order.get("timeout"), retval=order)


@approval.step
def decide(
    order: dict[str, Any], answer: Annotated[dict[str, Any] | None, SignalPayload("approved")]
) -> dict[str, Any]:
    return {**order, "answer": answer}


napping = Workflow(unique_name="napping")


@napping.step(paths=[WaitPath()])
def nap(x: dict[str, Any]) -> dict[str, Any]:
    raise Sleep(seconds=x["seconds"], retval=x)


@napping.step
def woke(x: dict[str, Any]) -> dict[str, Any]:
    return {**x, "woke_at": time.time()}


WORKFLOWS = (approval, napping)


@ergate_signals.job_waiting.connect(weak=False)
def _on_waiting(sender: str, job: Any, **kwargs: Any) -> None:
    if sender == "ergate.approval.ask":
        _kill_once("stored")


app, ergate = app_from_env("waiting_app", *WORKFLOWS)
