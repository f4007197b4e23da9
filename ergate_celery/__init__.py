"""Ergate-style step workflows running as chained Celery tasks.

Workflows written for `ergate` 0.6 run unchanged with `from ergate_celery import ...`.
"""

from pydantic import ValidationError

from ergate_celery.api import (
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
from ergate_celery.binding import ErgateCelery
from ergate_celery.exceptions import (
    AbortJob,
    DuplicateJobError,
    ErgateError,
    FanOut,
    GoToEnd,
    GoToStep,
    ImproperlyConfiguredError,
    InvalidDefinitionError,
    InvalidInputError,
    JobCancelled,
    JobFailedError,
    JobNotFoundError,
    JobStateError,
    JobTimeoutError,
    RedactedValidationError,
    ReverseGoToError,
    Sleep,
    UnknownStepError,
    UnknownWorkflowError,
    UnsupportedBackendError,
    WaitForSignal,
)
from ergate_celery.job_result import JobResult
from ergate_celery.model.annotations import (
    Context,
    CurrentRun,
    Depends,
    Input,
    SignalPayload,
    StepRun,
)
from ergate_celery.model.children import ChildResult
from ergate_celery.model.concurrency import Concurrency
from ergate_celery.model.job import FanOutState, Job, JobError, StepTiming, Wait
from ergate_celery.model.job_status import JobStatus
from ergate_celery.model.paths import (
    FanOutPath,
    GoToEndPath,
    GoToStepPath,
    NextStepPath,
    WaitPath,
    WorkflowPath,
)
from ergate_celery.model.progress import Progress, ProgressReporter
from ergate_celery.model.workflow import Workflow
from ergate_celery.model.workflow_step import WorkflowStep
from ergate_celery.stores.listing import JobPage

__version__ = "0.1.0"

__all__ = [
    "AbortJob",
    "ChildResult",
    "Concurrency",
    "Context",
    "CurrentRun",
    "Depends",
    "DuplicateJobError",
    "ErgateCelery",
    "ErgateError",
    "FanOut",
    "FanOutPath",
    "FanOutState",
    "GoToEnd",
    "GoToEndPath",
    "GoToStep",
    "GoToStepPath",
    "ImproperlyConfiguredError",
    "Input",
    "InvalidDefinitionError",
    "InvalidInputError",
    "Job",
    "JobCancelled",
    "JobError",
    "JobFailedError",
    "JobNotFoundError",
    "JobPage",
    "JobResult",
    "JobStateError",
    "JobStatus",
    "JobTimeoutError",
    "NextStepPath",
    "Progress",
    "ProgressReporter",
    "RedactedValidationError",
    "ReverseGoToError",
    "SignalPayload",
    "Sleep",
    "StepRun",
    "StepTiming",
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
