"""A step task's own result: the small summary Flower and `AsyncResult` show for a step run.

Step tasks run with `ignore_result=True`; the summary is stored by the store with the step's
outcome (one write on Redis), or directly when the message was dropped.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from ergate_celery.model.job import Job
from ergate_celery.model.workflow_step import WorkflowStep
from ergate_celery.stores.base import TaskResult

#: Step task ids start with this, and job ids may not (`submit_job` refuses them): a step's
#: own result then never lands on a job's record, whatever characters job ids hold.
STEP_TASK_ID_PREFIX = "ergate-step:"


def step_task_id(job: Job) -> str:
    """The Celery task id of the message of the job's current step run.

    It holds the job id, so searching Flower for a job id lists the job's steps.
    """
    return f"{STEP_TASK_ID_PREFIX}{job.id}:{job.steps_completed}"


def display_options(job: Job, step: WorkflowStep[Any, Any], show: bool) -> dict[str, Any]:
    """The `argsrepr`/`kwargsrepr` of a step message, given to every publish of one (the
    first, the next step, release, the sweep, a Celery retry): logs and Flower show these
    instead of the job, whose input and user context may hold personal data."""
    if show:
        return {}
    return {
        "argsrepr": f"job={job.id} workflow={job.workflow_name} step={step.name}"
        f"#{step.index} [input and context redacted]",
        "kwargsrepr": "{}",
    }


def own_result(task: Task[Any, Any], step: WorkflowStep[Any, Any]) -> TaskResult | None:
    """The step task's own result, which it stores itself (step tasks ignore their results);
    None when there is nowhere to store it (an eager call)."""
    request = task.request
    if request.id is None or request.is_eager:
        return None
    return TaskResult(request.id, lambda written: summary(written, step), request)


def reply(task: Task[Any, Any], document: dict[str, Any]) -> dict[str, Any]:
    """Store `document` (a summary) as the task's result, and return it."""
    request = task.request
    if request.id is not None and not request.is_eager:
        TaskResult(request.id, lambda _: document, request).store(task.backend, document)
    return document


def summary(job: Job, step: WorkflowStep[Any, Any], *, dropped: bool = False) -> dict[str, Any]:
    """The step run's summary: job id, status, step and percent (and `dropped`)."""
    fields = {
        "job_id": job.id,
        "status": job.status.name,
        "step": step.name,
        "percent_completed": job.percent_completed,
    }
    if dropped:
        fields["dropped"] = True
    return fields
