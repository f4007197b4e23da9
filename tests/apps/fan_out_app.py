"""Fan-out workflows for the worker tests (`tests/test_fan_out.py`), and a Celery app for
`celery -A tests.apps.fan_out_app worker` subprocesses, configured as `beat_app` is.

- `fo_parent` fans out one `fo_square` (or `fo_gated`) child per number and joins them;
- `fo_square` fails for inputs x with x % 17 == 5 (3 of the first 50);
- `fo_gated` holds each run until the file ERGATE_FAN_OUT_GATE names exists, counting in
  this process how many of its runs are under way at once (`GATED`);
- ERGATE_FAN_OUT_KILL_FLAG: a file path; the first worker process that has published
  KILL_AT child messages kills itself (SIGKILL) half-way through a fan-out, and creates that
  file to say so.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Annotated, Any

from celery.signals import after_task_publish

from ergate_celery import ChildResult, CurrentRun, FanOut, FanOutPath, StepRun, Workflow

from . import app_from_env
from .fault_app import mark

Run = Annotated[StepRun, CurrentRun()]

#: How long a gated run waits for its gate before failing.
GATE_TIMEOUT = 60.0
#: The number of child messages after which a worker with the kill flag kills itself.
KILL_AT = 100

square = Workflow(unique_name="fo_square")


@square.step
def compute(x: int, run: Run) -> int:
    mark(run)
    if x % 17 == 5:
        raise ValueError(f"no square for input number {x}")
    return x * x


gated = Workflow(unique_name="fo_gated")


class _Gauge:
    """Runs of `fo_gated` under way in this process, and the most seen at once, by parent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.most: dict[str, int] = {}

    def enter(self, parent_id: str) -> None:
        with self.lock:
            self.now[parent_id] = self.now.get(parent_id, 0) + 1
            self.most[parent_id] = max(self.most.get(parent_id, 0), self.now[parent_id])

    def leave(self, parent_id: str) -> None:
        with self.lock:
            self.now[parent_id] -= 1


GATED = _Gauge()


@gated.step
def hold(x: int, run: Run) -> int:
    mark(run)
    parent_id = run.job_id.rsplit(".", 1)[0]
    GATED.enter(parent_id)
    try:
        gate = os.environ.get("ERGATE_FAN_OUT_GATE", "")
        deadline = time.monotonic() + GATE_TIMEOUT
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gate} was never created")
            time.sleep(0.02)
    finally:
        GATED.leave(parent_id)
    return x


parent = Workflow(unique_name="fo_parent")


@parent.step(paths=[FanOutPath("join")])
def split(order: dict[str, Any], run: Run) -> None:
    mark(run)
    raise FanOut(
        order["child"],
        inputs=list(range(order["count"])),
        then=join,
        max_in_flight=order.get("max_in_flight"),
    )


@parent.step
def join(results: list[ChildResult], run: Run) -> dict[str, Any]:
    mark(run)
    return {
        "ids": [r.job_id for r in results],
        "values": [r.value for r in results if r.ok],
        "errors": [int(r.job_id.rsplit(".", 1)[1]) for r in results if r.error is not None],
        "statuses": [r.status.name for r in results],
    }


WORKFLOWS = (parent, square, gated)

_published = 0


@after_task_publish.connect
def _kill_half_way(sender: str | None = None, **kwargs: Any) -> None:
    global _published
    flag = os.environ.get("ERGATE_FAN_OUT_KILL_FLAG")
    if not flag or sender != "ergate.fo_square.compute":
        return
    _published += 1
    if _published == KILL_AT and not os.path.exists(flag):
        with open(flag, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get("ERGATE_TEST_CONF"):
    app, ergate = app_from_env("fan_out_app", *WORKFLOWS)
