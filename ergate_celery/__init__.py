"""Ergate-style step workflows running as chained Celery tasks.

Workflows written for `ergate` 0.6 run unchanged with `from ergate_celery import ...`.
"""

from pydantic import ValidationError

from .annotations import Context, CurrentRun, Depends, Input, SignalPayload, StepRun
from .api import (
    cancel_job,
    get_job,
    list_jobs,
    pause_workflow,
    paused_workflows,
    resume_workflow,
    retry_job,
    retry_jobs,
    signal_job,
    submit_job,
    wait_for_job,
)
from .binding import ErgateCelery
from .exceptions import (
    AbortJob,
    DuplicateJobError,
    ErgateError,
    GoToEnd,
    GoToStep,
    InvalidDefinitionError,
    InvalidInputError,
    JobNotFoundError,
    JobStateError,
    ReverseGoToError,
    Sleep,
    UnknownStepError,
    UnknownWorkflowError,
    UnsupportedBackendError,
    WaitForSignal,
)
from .job import Job, JobError, Wait
from .job_result import JobFailedError, JobResult
from .job_status import JobStatus
from .paths import GoToEndPath, GoToStepPath, NextStepPath, WaitPath, WorkflowPath
from .progress import Progress, ProgressReporter
from .stores.listing import JobPage
from .workflow import Workflow
from .workflow_step import WorkflowStep

__version__ = "0.1.0"

__all__ = [
    "AbortJob",
    "Context",
    "CurrentRun",
    "Depends",
    "DuplicateJobError",
    "ErgateCelery",
    "ErgateError",
    "GoToEnd",
    "GoToEndPath",
    "GoToStep",
    "GoToStepPath",
    "Input",
    "InvalidDefinitionError",
    "InvalidInputError",
    "Job",
    "JobError",
    "JobFailedError",
    "JobNotFoundError",
    "JobPage",
    "JobResult",
    "JobStateError",
    "JobStatus",
    "NextStepPath",
    "Progress",
    "ProgressReporter",
    "ReverseGoToError",
    "SignalPayload",
    "Sleep",
    "StepRun",
    "UnknownStepError",
    "UnknownWorkflowError",
    "UnsupportedBackendError",
    "ValidationError",
    "Wait",
    "WaitForSignal",
    "WaitPath",
    "Workflow",
    "WorkflowPath",
    "WorkflowStep",
    "cancel_job",
    "get_job",
    "list_jobs",
    "pause_workflow",
    "paused_workflows",
    "resume_workflow",
    "retry_job",
    "retry_jobs",
    "signal_job",
    "submit_job",
    "wait_for_job",
]
