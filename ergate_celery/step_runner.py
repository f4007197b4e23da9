"""The step path without Celery: run one step's code, then compute the job that follows.

`run_step` calls user code and turns what it did into a `StepOutcome`; `advance` is a pure
function (job, outcome) -> next job that reproduces Ergate 0.6's bookkeeping exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from .annotations import StepRun
from .exceptions import AbortJob, GoToEnd, GoToStep, ReverseGoToError, UnknownStepError
from .injection import injected_arguments
from .job import Job, JobError
from .job_status import JobStatus
from .paths import GoToStepPath, NextStepPath
from .progress import ProgressReporter
from .workflow import Workflow
from .workflow_step import WorkflowStep


class Outcome(Enum):
    """How a step's code ended."""

    RETURNED = "returned"
    WENT_TO_STEP = "went_to_step"
    WENT_TO_END = "went_to_end"
    ABORTED = "aborted"
    RAISED = "raised"


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What one run of a step's code did."""

    outcome: Outcome
    value: Any = None
    target: WorkflowStep[Any, Any] | None = None
    message: str = ""
    exception: Exception | None = None


def run_step(
    step: WorkflowStep[Any, Any],
    input_value: Any,
    user_context: Any,
    run: StepRun | None = None,
    progress: ProgressReporter | None = None,
) -> StepOutcome:
    """Call `step` with injected arguments; dependencies are torn down before this returns."""
    returned = False
    arguments = injected_arguments(step.plan, input_value, user_context, run, progress)
    try:
        with arguments as (args, kwargs):
            value = step.callable(*args, **kwargs)
            returned = True
    except GoToStep as exc:
        return StepOutcome(Outcome.WENT_TO_STEP, value=exc.retval, target=exc.step)
    except GoToEnd as exc:
        return StepOutcome(Outcome.WENT_TO_END, value=exc.retval)
    except AbortJob as exc:
        return StepOutcome(Outcome.ABORTED, message=exc.message, exception=exc)
    except Exception as exc:
        return StepOutcome(Outcome.RAISED, exception=exc)
    if not returned:
        # A dependency swallowed the step's exception: the step still produced no value.
        error = RuntimeError(f"Step {step} raised, and a dependency's teardown suppressed it")
        return StepOutcome(Outcome.RAISED, exception=error)
    return StepOutcome(Outcome.RETURNED, value=value)


def advance(job: Job, workflow: Workflow, result: StepOutcome) -> Job:
    """The job after its current step ended with `result` (a new object; `job` is unchanged)."""
    index = job.current_step
    step_name = workflow[index].name
    if result.outcome is Outcome.RETURNED:
        remaining = workflow.remaining_steps(index, NextStepPath)
        return _completed_step(job, index + 1, result.value, remaining, workflow)
    if result.outcome is Outcome.WENT_TO_END:
        return _completed_step(job, job.steps_completed, result.value, 1, workflow)
    if result.outcome is Outcome.WENT_TO_STEP:
        target = result.target
        assert target is not None
        if target.workflow is not workflow:
            error: BaseException = UnknownStepError(
                f"Step {step_name!r} raised GoToStep({target}), a step of another workflow"
            )
            return _failed(job, JobError.from_exception(error, step_name))
        if target.index <= index:
            error = ReverseGoToError(
                f"Step {step_name!r} raised GoToStep({target.name!r}), which is not after it; "
                "steps can only go forward"
            )
            return _failed(job, JobError.from_exception(error, step_name))
        remaining = workflow.remaining_steps(index, GoToStepPath, target.name)
        return _completed_step(job, target.index, result.value, remaining, workflow)
    if result.outcome is Outcome.ABORTED:
        return job.model_copy(
            update={
                "status": JobStatus.ABORTED,
                "error": JobError(type="AbortJob", message=result.message, step=step_name),
            }
        )
    assert result.exception is not None
    return _failed(job, JobError.from_exception(result.exception, step_name))


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
