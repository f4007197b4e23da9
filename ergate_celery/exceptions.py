"""Every exception ergate_celery raises, and the ones a step raises to steer its job."""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from pydantic import ValidationError

if TYPE_CHECKING:
    from ergate_celery.model.job import Job
    from ergate_celery.model.workflow import Workflow
    from ergate_celery.model.workflow_step import WorkflowStep

__all__ = [
    "AbortJob",
    "DuplicateJobError",
    "ErgateError",
    "FanOut",
    "GoToEnd",
    "GoToStep",
    "ImproperlyConfiguredError",
    "InvalidDefinitionError",
    "InvalidInputError",
    "JobCancelled",
    "JobFailedError",
    "JobNotFoundError",
    "JobStateError",
    "JobTimeoutError",
    "RedactedValidationError",
    "ReverseGoToError",
    "Sleep",
    "UnknownStepError",
    "UnknownWorkflowError",
    "UnsupportedBackendError",
    "ValidationError",
    "WaitForSignal",
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


class DuplicateJobError(ErgateError):
    """A job with that id already exists; the existing job was left untouched."""


class JobStateError(ErgateError):
    """The job's status does not allow what was asked (retrying a running job, signalling a
    finished one); the job was left unchanged."""


class InvalidInputError(ErgateError, ValueError):
    """A job's input, context, id or size is not acceptable; nothing was stored or published."""

    def __init__(self, message: str, *, oversized: bool = False) -> None:
        super().__init__(message)
        #: True when the record would exceed `ergate_max_payload_bytes`.
        self.oversized = oversized


class RedactedValidationError(ErgateError, ValueError):
    """A value did not fit its pydantic type (a step's input, say): pydantic's
    `ValidationError` told by where each error is and its type, never by the values, which may
    be personal data. Jobs, logs, Flower and task results show this instead."""

    #: At most this many errors are named; the count says how many there were.
    NAMED = 10

    @classmethod
    def of(cls, exc: ValidationError) -> RedactedValidationError:
        """`exc` without its values (its traceback kept: frames show code, not values)."""
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        where = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'the value'} ({error['type']})"
            for error in errors[: cls.NAMED]
        )
        more = f"; and {len(errors) - cls.NAMED} more" if len(errors) > cls.NAMED else ""
        plural = "" if len(errors) == 1 else "s"
        message = f"{len(errors)} validation error{plural} for {exc.title}: {where}{more}"
        return cls(message).with_traceback(exc.__traceback__)


class UnsupportedBackendError(ErgateError):
    """The Celery result backend cannot hold ergate jobs."""


class ImproperlyConfiguredError(ErgateError):
    """An `ergate_*` setting has a value of the wrong type or range."""


class JobFailedError(ErgateError):
    """`AsyncResult(job.id).get()` of a job that ended FAILED; `.job` is the job."""

    def __init__(self, message: str, job: Job) -> None:
        super().__init__(message)
        self.job = job


class JobTimeoutError(ErgateError, CeleryTimeoutError, TimeoutError):
    """A job was not final within the time given: what `wait_for_job` and
    `AsyncResult(job.id).get(timeout=...)` raise. It is both Python's `TimeoutError` and
    `celery.exceptions.TimeoutError`, so either `except` catches it."""


class JobCancelled(ErgateError):  # noqa: N818 - a flow-control signal, like AbortJob
    """The job was cancelled while its step ran: `progress.report()` raises it, and a step
    may raise it after `StepRun.cancel_requested()`. The step stops (its `finally` blocks and
    dependencies' teardown run), no further step runs and the job ends CANCELLED."""


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


#: The longest signal name: names are keys, not messages (put data in the payload).
MAX_SIGNAL_NAME_LENGTH = 64


class Sleep(ErgateError):  # noqa: N818 - a flow-control signal, like GoToStep
    """Raised from a step to complete it and hold the job SCHEDULED until a time.

    Give exactly one of `seconds` (from now, >= 0) or `until` (a timezone-aware datetime);
    `retval` is the next step's input. No worker slot is held: beat releases the job.
    """

    def __init__(
        self, *, seconds: float | None = None, until: datetime | None = None, retval: Any = None
    ) -> None:
        if (seconds is None) == (until is None):
            raise InvalidInputError(
                "Sleep takes exactly one of seconds= (a number >= 0) or until= (a timezone-"
                f"aware datetime), got seconds={seconds!r}, until={until!r}"
            )
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise InvalidInputError(f"Sleep(seconds=...) must be a number >= 0, got {seconds!r}")
        if until is not None:
            if not isinstance(until, datetime):
                raise InvalidInputError(
                    f"Sleep(until=...) must be a datetime, got {type(until).__name__}"
                )
            if until.tzinfo is None or until.utcoffset() is None:
                raise InvalidInputError(
                    f"Sleep(until={until.isoformat()}) is a naive datetime, which cannot be "
                    "compared with the clock beat reads; pass an aware one, e.g. "
                    "datetime.now(UTC) + timedelta(hours=1)"
                )
        super().__init__(seconds, until, retval)
        self.seconds = seconds
        self.until = until
        self.retval = retval


class WaitForSignal(ErgateError):  # noqa: N818 - a flow-control signal, like GoToStep
    """Raised from a step to complete it and hold the job SCHEDULED until `signal_job(job_id,
    name, payload)`; past `timeout` seconds (None: never) the job ends FAILED with
    `SignalTimeout`. `retval` is the next step's input."""

    def __init__(self, name: str, *, timeout: float | None = None, retval: Any = None) -> None:
        check_signal_name(name)
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise InvalidInputError(
                f"WaitForSignal(timeout=...) must be a number of seconds > 0 or None (wait "
                f"forever), got {timeout!r}"
            )
        super().__init__(name, timeout, retval)
        self.name = name
        self.timeout = timeout
        self.retval = retval


#: The most children one `FanOut` may start.
MAX_CHILDREN = 100_000


class FanOut(ErgateError):  # noqa: N818 - a flow-control signal, like GoToStep
    """Raised from a step to complete it by starting one child job of `workflow` per input;
    the job waits SCHEDULED, holding no worker slot, until every child has ended, then
    continues at step `then` with a `list[ChildResult]` in input order.

    `max_in_flight` bounds the children unfinished at once; `user_context` is the
    children's (the parent's when not given).
    """

    def __init__(
        self,
        workflow: str | Workflow,
        inputs: Any,
        then: WorkflowStep[Any, Any] | str,
        max_in_flight: int | None = None,
        *,
        user_context: Any = ...,
    ) -> None:
        name = workflow if isinstance(workflow, str) else getattr(workflow, "unique_name", None)
        if not isinstance(name, str):
            raise InvalidInputError(
                f"FanOut(workflow=...) takes a workflow's unique_name or the Workflow, got "
                f"{type(workflow).__name__}"
            )
        if isinstance(inputs, str | bytes | dict) or not hasattr(inputs, "__iter__"):
            raise InvalidInputError(
                f"FanOut(inputs=...) takes a list with one input per child, got "
                f"{type(inputs).__name__}"
            )
        values = list(inputs)
        if len(values) > MAX_CHILDREN:
            raise InvalidInputError(
                f"FanOut of {len(values)} children is over the limit of {MAX_CHILDREN}; "
                "fan out in stages (children that fan out themselves)"
            )
        if max_in_flight is not None and (
            isinstance(max_in_flight, bool)
            or not isinstance(max_in_flight, int)
            or max_in_flight < 1
        ):
            raise InvalidInputError(
                f"FanOut(max_in_flight=...) must be a whole number >= 1 or None (no limit), "
                f"got {max_in_flight!r}"
            )
        super().__init__(name, len(values), then)
        self.workflow = name
        self.inputs = values
        self.then = then
        self.max_in_flight = max_in_flight
        #: `...` (Ellipsis) when not given: the children get the parent's.
        self.user_context = user_context


def check_signal_name(name: Any) -> None:
    """Refuse a signal name that is not a short string without spaces."""
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= MAX_SIGNAL_NAME_LENGTH
        or not name.isprintable()
        or any(c.isspace() for c in name)
    ):
        shown = repr(name)[:80]
        raise InvalidInputError(
            f"A signal name is a string of 1 to {MAX_SIGNAL_NAME_LENGTH} printable characters "
            f'without spaces (e.g. "approved"), got {type(name).__name__} {shown}'
        )
