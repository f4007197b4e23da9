"""The step path without Celery: run one step's code, then compute the job that follows.

`run_step` calls user code and turns what it did into a `StepOutcome` (a tagged union);
`advance` is a pure function (job, outcome) -> next job that reproduces Ergate 0.6's
bookkeeping exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ergate_celery.exceptions import (
    AbortJob,
    FanOut,
    GoToEnd,
    GoToStep,
    JobCancelled,
    RedactedValidationError,
    ReverseGoToError,
    Sleep,
    UnknownStepError,
    WaitForSignal,
)
from ergate_celery.lifecycle import fan_out, waiting
from ergate_celery.model.annotations import StepRun
from ergate_celery.model.injection import injected_arguments
from ergate_celery.model.job import FanOutState, Job, JobError, Wait
from ergate_celery.model.job_status import JobStatus
from ergate_celery.model.paths import GoToStepPath, NextStepPath
from ergate_celery.model.progress import ProgressReporter
from ergate_celery.model.workflow import Workflow
from ergate_celery.model.workflow_step import WorkflowStep


@dataclass(frozen=True, slots=True)
class Returned:
    """The step returned `value`."""

    value: Any


@dataclass(frozen=True, slots=True)
class WentToStep:
    """The step raised `GoToStep(target, retval=value)`."""

    target: WorkflowStep[Any, Any]
    value: Any


@dataclass(frozen=True, slots=True)
class WentToEnd:
    """The step raised `GoToEnd(retval=value)`."""

    value: Any


@dataclass(frozen=True, slots=True)
class Aborted:
    """The step raised `AbortJob(message)`."""

    message: str


@dataclass(frozen=True, slots=True)
class Waited:
    """The step raised `Sleep` or `WaitForSignal(retval=value)`: it completed, and the job
    waits as `wait` says before the next step."""

    value: Any
    wait: Wait


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The step stopped with `JobCancelled`: its job was cancelled while it ran."""


@dataclass(frozen=True, slots=True)
class FannedOut:
    """The step raised `FanOut` at `since`; `state` is set once its children were made."""

    request: FanOut
    since: datetime
    state: FanOutState | None = None


@dataclass(frozen=True, slots=True)
class Raised:
    """The step raised any other exception."""

    exception: Exception


#: What one run of a step's code did.
StepOutcome = Returned | WentToStep | WentToEnd | Aborted | Waited | FannedOut | Cancelled | Raised


def run_step(
    step: WorkflowStep[Any, Any],
    input_value: Any,
    user_context: Any,
    run: StepRun | None = None,
    progress: ProgressReporter | None = None,
    signals: Mapping[str, Any] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> StepOutcome:
    """Call `step` with injected arguments; dependencies are torn down before this returns.

    A wait the step asks for starts at `clock()` (default: the current time)."""
    returned = False
    arguments = injected_arguments(step.plan, input_value, user_context, run, progress, signals)
    try:
        with arguments as (args, kwargs):
            value = step.callable(*args, **kwargs)
            returned = True
    except GoToStep as exc:
        return WentToStep(exc.step, exc.retval)
    except GoToEnd as exc:
        return WentToEnd(exc.retval)
    except AbortJob as exc:
        return Aborted(exc.message)
    except JobCancelled:
        return Cancelled()
    except (Sleep, WaitForSignal) as exc:
        now = clock() if clock is not None else datetime.now(UTC)
        try:
            wait = waiting.wait_for(exc, step.name, now)
        except Exception as bad:  # a wait no clock can reach (Sleep(seconds=1e12)): an outcome
            return Raised(bad)
        return Waited(exc.retval, wait)
    except FanOut as exc:
        return FannedOut(exc, clock() if clock is not None else datetime.now(UTC))
    except ValidationError as exc:
        # Its text shows the values that did not fit; the job, the logs and Flower must not.
        return Raised(RedactedValidationError.of(exc))
    except Exception as exc:
        return Raised(exc)
    if not returned:
        # A dependency swallowed the step's exception: the step still produced no value.
        return Raised(
            RuntimeError(f"Step {step} raised, and a dependency's teardown suppressed it")
        )
    return Returned(value)


def advance(job: Job, workflow: Workflow, outcome: StepOutcome) -> Job:
    """The job after its current step ended with `outcome` (a new object; `job` is unchanged)."""
    index = job.current_step
    step_name = workflow[index].name
    match outcome:
        case Returned(value=value):
            remaining = workflow.remaining_steps(index, NextStepPath)
            return _completed_step(job, index + 1, value, remaining, workflow)
        case WentToEnd(value=value):
            return _completed_step(job, job.steps_completed, value, 1, workflow)
        case WentToStep(target=target, value=value):
            if target.workflow is not workflow:
                error: Exception = UnknownStepError(
                    f"Step {step_name!r} raised GoToStep({target}), a step of another workflow"
                )
                return _failed(job, JobError.from_exception(error, step_name))
            if target.index <= index:
                error = ReverseGoToError(
                    f"Step {step_name!r} raised GoToStep({target.name!r}), which is not after "
                    "it; steps can only go forward"
                )
                return _failed(job, JobError.from_exception(error, step_name))
            remaining = workflow.remaining_steps(index, GoToStepPath, target.name)
            return _completed_step(job, target.index, value, remaining, workflow)
        case Waited(value=value, wait=wait):
            # A wait counts as the step's return; the next step waits behind it.
            remaining = workflow.remaining_steps(index, NextStepPath)
            after = _completed_step(job, index + 1, value, remaining, workflow)
            if after.status is not JobStatus.QUEUED:
                return after  # nothing follows the step: nothing to hold back
            return after.model_copy(update={"status": JobStatus.SCHEDULED, "wait": wait})
        case FannedOut(request=request, since=since, state=state):
            try:
                target = fan_out.then_step(workflow, index, request.then)
            except (UnknownStepError, ReverseGoToError) as exc:
                return _failed(job, JobError.from_exception(exc, step_name))
            assert state is not None, "the children are made before the step's outcome"
            remaining = workflow.remaining_steps(index, GoToStepPath, target.name)
            after = _completed_step(job, target.index, None, remaining, workflow)
            return fan_out.waiting_for_children(job, after, state, since)
        case Aborted(message=message):
            error_info = JobError(type="AbortJob", message=message, step=step_name)
            return job.model_copy(update={"status": JobStatus.ABORTED, "error": error_info})
        case Cancelled():
            # The step did not complete: a retry of the job runs it again.
            return job.model_copy(update={"status": JobStatus.CANCELLED})
        case Raised(exception=exception):
            return _failed(job, JobError.from_exception(exception, step_name))
    raise TypeError(f"Not a step outcome: {outcome!r}")


def percent_after_return(job: Job, workflow: Workflow) -> float:
    """The percent the job will show if its current step returns normally."""
    remaining = workflow.remaining_steps(job.current_step, NextStepPath)
    total = job.steps_completed + remaining
    return float((min(job.steps_completed + 1, total) / total) * 100)


def _completed_step(
    job: Job, next_index: int, value: Any, remaining: int, workflow: Workflow
) -> Job:
    total = job.steps_completed + remaining
    completed = min(job.steps_completed + 1, total)
    percent = float((completed / total) * 100)
    status = JobStatus.COMPLETED if completed == total else JobStatus.QUEUED
    if status is JobStatus.QUEUED and next_index >= len(workflow):
        # Past the last step with steps still predicted (a last step hinted without
        # NextStepPath returned normally): Ergate 0.6 crashes here; nothing is left to run.
        status, percent = JobStatus.COMPLETED, 100.0
    return job.model_copy(
        update={
            "current_step": next_index,
            "current_step_name": workflow[next_index].name if next_index < len(workflow) else None,
            "steps_completed": completed,
            "percent_completed": percent,
            "status": status,
            "last_return_value": value,
            "attempt": 0,
        }
    )


def _failed(job: Job, error: JobError) -> Job:
    return job.model_copy(update={"status": JobStatus.FAILED, "error": error})
