"""Markers that tell the step runner what to pass to a step's parameters."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ergate_celery.model.progress import CancelWatch, Progress

T = TypeVar("T")


class Input:
    """The parameter receives the step's input value (as a plain parameter does)."""


class Context:
    """The parameter receives `job.user_context`."""


class CurrentRun:
    """The parameter receives a `StepRun`: who is running, and a stable idempotency key."""


@dataclass(frozen=True, slots=True)
class StepRun:
    """The step run being executed, injected through `Annotated[StepRun, CurrentRun()]`."""

    job_id: str
    workflow_name: str
    step_name: str
    step_index: int
    #: `steps_completed` when this step started: unique per step run of a job.
    hop: int
    #: 1 on the first run; more when Celery retried or redelivered the step.
    attempt: int
    #: How the run learns of a cancel (None where nothing can cancel it).
    cancel_watch: CancelWatch | None = field(default=None, repr=False, compare=False)

    def cancel_requested(self) -> bool:
        """Whether the job was cancelled while this step runs (read from the store at most
        once per `ergate_progress_interval`): stop early, or raise `JobCancelled`."""
        return self.cancel_watch is not None and self.cancel_watch.requested()

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of this step of this job; use it to dedupe effects."""
        return f"{self.job_id}:{self.step_index}:{self.hop}"


class Depends(Generic[T]):
    """The parameter receives what the generator `dependency` yields.

    The dependency may itself take input, context and other dependencies; within one step run
    each dependency is set up once, and torn down (the code after `yield`) when the step ends.
    """

    def __init__(self, dependency: Callable[..., Generator[T, None, None]]) -> None:
        self.dependency = dependency

    def __repr__(self) -> str:
        return f"Depends({getattr(self.dependency, '__qualname__', self.dependency)!r})"


@dataclass(frozen=True, slots=True)
class SignalPayload:
    """The parameter receives the payload of signal `name` sent by `signal_job`, or None
    when it never came."""

    name: str


Marker = Input | Context | CurrentRun | Progress | SignalPayload | Depends[Any]
