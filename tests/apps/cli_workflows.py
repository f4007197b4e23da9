"""Workflows the CLI and Flower tests run, registered by `tests.apps.beat_app` and by the
tests' own apps (importing this module has no side effects)."""

import time
from pathlib import Path
from typing import Any

from ergate_celery import (
    AbortJob,
    GoToEnd,
    GoToEndPath,
    GoToStep,
    GoToStepPath,
    NextStepPath,
    Workflow,
)

#: Three steps; each sleeps `input["sleep"]` seconds; `input["fail"]` fails the second,
#: `input["abort"]` aborts the job there;
#: `input["wait_for"]` (a path) holds the first step until that file exists.
cli_steps = Workflow(unique_name="cli_steps")

GATE_TIMEOUT = 60


@cli_steps.step
def prepare(x: dict[str, Any]) -> dict[str, Any]:
    if "wait_for" in x:
        gate = Path(x["wait_for"])
        deadline = time.monotonic() + GATE_TIMEOUT
        while not gate.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gate} was never created")
            time.sleep(0.02)
    time.sleep(x.get("sleep", 0))
    return x


@cli_steps.step
def process(x: dict[str, Any]) -> dict[str, Any]:
    time.sleep(x.get("sleep", 0))
    if x.get("fail"):
        raise ValueError("the cli test asked this step to fail")
    if x.get("abort"):
        raise AbortJob("the test asked this job to stop")
    return x


@cli_steps.step
def finish(x: dict[str, Any]) -> dict[str, Any]:
    time.sleep(x.get("sleep", 0))
    return {**x, "done": True}


#: A branch: `route` goes on to `check`, jumps to `ship`, or ends the job.
branchy = Workflow(unique_name="branchy")


@branchy.step(paths=[NextStepPath(), GoToStepPath("ship"), GoToEndPath()])
def route(x: str) -> str:
    if x == "skip":
        raise GoToStep(ship, retval=x)
    if x == "stop":
        raise GoToEnd(retval=x)
    return x


@branchy.step(paths=[NextStepPath(), GoToEndPath()])
def check(x: str) -> str:
    return x


@branchy.step
def ship(x: str) -> str:
    return f"shipped {x}"


WORKFLOWS = (cli_steps, branchy)
