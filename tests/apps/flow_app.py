"""A Celery app for `celery -A tests.apps.flow_app worker` subprocesses of the flow-control
tests: a workflow limited to one job per tenant, whose step appends `start`/`end` lines to
the marks file (ERGATE_FAULT_MARKS, one `write` on an O_APPEND descriptor each, so the file
orders the lines of every process) and ends as its input says."""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

from ergate_celery import AbortJob, Concurrency, CurrentRun, StepRun, Workflow

from . import app_from_env

Run = Annotated[StepRun, CurrentRun()]

tenants = Workflow(
    unique_name="flow_tenant",
    concurrency=Concurrency(1, key=lambda job: job.user_context["tenant"]),
)


def note(what: str, run: StepRun, tenant: str) -> None:
    """Append `<what> <tenant> <job id> <pid>` to the marks file."""
    path = os.environ.get("ERGATE_FAULT_MARKS")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{what} {tenant} {run.job_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@tenants.step(time_limit=2)
def work(order: dict[str, Any], run: Run) -> dict[str, Any]:
    tenant = order["tenant"]
    note("start", run, tenant)
    how = order.get("end", "complete")
    if how == "sigkill" and run.attempt == 1:
        time.sleep(30)  # until the test kills this worker
    if how == "time_limit":
        time.sleep(30)  # past the step's time_limit
    time.sleep(float(order.get("seconds", 0.2)))
    note("end", run, tenant)
    if how == "fail":
        raise RuntimeError("the tenant's sync failed")
    if how == "abort":
        raise AbortJob("nothing to sync")
    return order


app, ergate = app_from_env("flow_app", tenants)
