"""The Celery side of steps: the task class every step task has, and installing a step as a
task (messages for a step task this worker does not have: `unknown_steps.py`)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from billiard.exceptions import WorkerLostError
from celery import Celery, Task
from celery.worker import state as worker_state
from celery.worker.request import Request

from ergate_celery.lifecycle.events import TimeLimit
from ergate_celery.model.job import Job
from ergate_celery.model.workflow import RETRY_OPTIONS, STEP_TASK_OPTIONS
from ergate_celery.model.workflow_step import WorkflowStep
from ergate_celery.settings import ErgateSettings
from ergate_celery.worker.leases import holder, let_go
from ergate_celery.worker.runtime import Runtime
from ergate_celery.worker.step_body import execute_step

logger = logging.getLogger(__name__)

# Retries are decided in the step body (a retry must stay the same step), so these step
# options are not handed to Celery's own autoretry wrapper.
_CELERY_OPTIONS = STEP_TASK_OPTIONS - RETRY_OPTIONS


class StepHost(Protocol):
    """What installs the step tasks, and what their body runs with: an `ErgateCelery`, or
    the private app of a `WorkflowTester`."""

    @property
    def app(self) -> Celery: ...

    @property
    def settings(self) -> ErgateSettings: ...

    @property
    def runtime(self) -> Runtime: ...


class StepRequest(Request):
    """A step message in the worker's main process, where Celery tells what happened to the
    pool process running it.

    When that process dies (killed, out of memory), the claim it held is let go before the
    message is requeued, so the step runs again at once instead of after its lease. When
    Celery kills it at the step's hard `time_limit`, the job ends FAILED at once instead of
    waiting for the sweep — if that process held the job's claim: a redelivered copy killed
    while it watched another run's lease ends nothing.
    """

    task: StepTask

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        pid = self.worker_pid
        if isinstance(exc, WorkerLostError | SystemExit) and pid is not None:
            job_id = _job_id(self.args)
            if job_id is not None:
                let_go(self.task.ergate.runtime, job_id, self.hostname, int(pid), self.task.name)
        super().on_failure(exc_info, send_failed_event, return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        pid = self.worker_pid
        if not soft and pid is not None and not worker_state.should_terminate:
            self._fail_at_time_limit(float(timeout), holder(self.hostname, int(pid)))
        super().on_timeout(soft, timeout)

    def _fail_at_time_limit(self, seconds: float, killed: str) -> None:
        try:
            job = Job.model_validate(self.args[0] if self.args else None)
        except Exception:
            logger.warning("A step of %s hit its time limit with an unreadable job", self.name)
            return
        event = TimeLimit(self.task.ergate_step.name, job.steps_completed, seconds, killed)
        try:
            self.task.ergate.runtime.apply(str(job.id), event, sender=self.task.name)
        except Exception:
            logger.exception("Could not fail job %s after its step's time limit", job.id)


def _job_id(args: Any) -> str | None:
    payload = args[0] if args else None
    job_id = payload.get("id") if isinstance(payload, dict) else None
    return job_id if isinstance(job_id, str) else None


class StepTask(Task):  # type: ignore[type-arg]
    """The Celery task class of every step; its one argument is the job as JSON."""

    ergate: StepHost
    ergate_step: WorkflowStep[Any, Any]
    Request = f"{__name__}:StepRequest"


#: The task options every step task has, whatever its step asks for.
_FIXED_TASK_OPTIONS: dict[str, Any] = {
    "base": StepTask,
    "bind": True,
    "shared": False,
    "lazy": False,
    # The step body stores its summary itself, with the job's outcome in one write
    # where the backend allows; Celery still stores a step's failure.
    "ignore_result": True,
    "store_errors_even_if_ignored": True,
}


def install_step(ergate: StepHost, step: WorkflowStep[Any, Any]) -> None:
    """Install `step` into the app as the Celery task `ergate.<workflow>.<step>`."""
    settings = ergate.settings
    options: dict[str, Any] = {
        **_FIXED_TASK_OPTIONS,
        "acks_late": settings.acks_late,
        "reject_on_worker_lost": settings.reject_on_worker_lost,
    }
    if settings.step_time_limit is not None:
        # A step that hangs while its worker lives keeps renewing its lease: only a time
        # limit ends it. A step's own `time_limit` wins.
        options["time_limit"] = settings.step_time_limit
    options.update({k: v for k, v in step.task_options.items() if k in _CELERY_OPTIONS})
    ergate.app.task(  # type: ignore[no-untyped-call]
        name=step.task_name, ergate=ergate, ergate_step=step, **options
    )(_step_body)


def _step_body(self: StepTask, payload: Any) -> dict[str, Any]:
    return execute_step(self.ergate.runtime, self.ergate_step, self, payload)
