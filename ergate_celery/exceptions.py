"""Every exception ergate_celery raises, and the ones a step raises to steer its job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from .workflow_step import WorkflowStep

__all__ = [
    "AbortJob",
    "DuplicateJobError",
    "ErgateError",
    "GoToEnd",
    "GoToStep",
    "InvalidDefinitionError",
    "InvalidInputError",
    "JobNotFoundError",
    "JobStateError",
    "ReverseGoToError",
    "UnknownStepError",
    "UnknownWorkflowError",
    "UnsupportedBackendError",
    "ValidationError",
]


class ErgateError(Exception):
    """Base class of ergate_celery's exceptions."""


class InvalidDefinitionError(ErgateError):
    """A workflow or step definition is invalid (duplicate step name, bad parameter...)."""


class ReverseGoToError(ErgateError):
    """A step tried to go to itself or an earlier step; only forward jumps are allowed."""


class UnknownStepError(ErgateError):
    """A step name or index does not exist in its workflow."""


class UnknownWorkflowError(ErgateError, LookupError):
    """No workflow with that unique name is registered with this Celery app."""


class JobNotFoundError(ErgateError, LookupError):
    """No job with that id is stored in the result backend."""


class JobStateError(ErgateError):
    """The job is not in a status that allows what was asked (e.g. retrying a running job)."""


class DuplicateJobError(ErgateError):
    """A job with that id already exists; the existing job was left untouched."""


class InvalidInputError(ErgateError, ValueError):
    """A job's input, context, id or size is not acceptable; nothing was stored or published."""

    def __init__(self, message: str, *, oversized: bool = False) -> None:
        super().__init__(message)
        #: True when the record would exceed `ergate_max_payload_bytes`.
        self.oversized = oversized


class UnsupportedBackendError(ErgateError):
    """The Celery result backend cannot hold ergate jobs."""


class AbortJob(ErgateError):  # noqa: N818 - Ergate's public name
    """Raised from a step to stop the job as `ABORTED`: an expected stop, not a failure."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class GoToEnd(ErgateError):  # noqa: N818 - Ergate's public name
    """Raised from a step to complete the job at once with `retval` as last return value."""

    def __init__(self, retval: Any = None) -> None:
        super().__init__(retval)
        self.retval = retval


class GoToStep(ErgateError):  # noqa: N818 - Ergate's public name
    """Raised from a step to continue at a later `step`, which receives `retval`."""

    def __init__(self, step: WorkflowStep[Any, Any], *, retval: Any = None) -> None:
        super().__init__(step, retval)
        self.step = step
        self.retval = retval
