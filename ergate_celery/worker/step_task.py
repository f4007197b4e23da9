"""The Celery side of steps: the task class every step task has, and installing a step as a
task (messages for a step task this worker does not have: `unknown_steps.py`)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Celery, Task
from celery.worker.request import Request

from ergate_celery.lifecycle.events import TimeLimit
from ergate_celery.model.job import Job
from ergate_celery.model.workflow import RETRY_OPTIONS, STEP_TASK_OPTIONS
from ergate_celery.model.workflow_step import WorkflowStep
from ergate_celery.settings import ErgateSettings
from ergate_celery.worker.leases import let_go
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
    """A step message in the worker's main process. When the pool process running its step
    dies (killed, out of memory), the claim it held is let go before the message is requeued,
    so the step runs again at once instead of after its lease."""

    task: StepTask

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        pid = self.worker_pid
        if isinstance(exc, WorkerLostError | SystemExit) and pid is not None:
            payload = self.args[0] if self.args else None
            job_id = payload.get("id") if isinstance(payload, dict) else None
            if isinstance(job_id, str):
                let_go(self.task.ergate.runtime, job_id, self.hostname, int(pid), self.task.name)
        super().on_failure(exc_info, send_failed_event, return_ok)


class StepTask(Task):  # type: ignore[type-arg]
    """The Celery task class of every step; its one argument is the job as JSON."""

    ergate: StepHost
    ergate_step: WorkflowStep[Any, Any]
    Request = f"{__name__}:StepRequest"

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Celery calls this in the worker's main process when it kills a step at its hard
        `time_limit`: the job ends FAILED at once instead of waiting for the sweep."""
        if not isinstance(exc, TimeLimitExceeded):
            return
        payload = args[0] if args else None
        try:
            job = Job.model_validate(payload)
        except Exception:
            logger.warning("A step of %s hit its time limit with an unreadable job", self.name)
            return
        step = self.ergate_step
        seconds = float(exc.args[0]) if exc.args else float(self.time_limit or 0)
        event = TimeLimit(step.name, job.steps_completed, seconds)
        try:
            self.ergate.runtime.apply(str(job.id), event, sender=self.name)
        except Exception:
            logger.exception("Could not fail job %s after its step's time limit", job.id)


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
