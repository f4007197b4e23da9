"""The hook a tracing or metrics integration plugs into (`ergate_celery.contrib.opentelemetry`).

Unset, as it is unless such an integration is installed, it costs one attribute read where it
is consulted: submission, the step body, the operations on a job and the announcer. Set, the
observer is told what happens to jobs and decides what to make of it; the package itself
imports no telemetry library.

What is observed is always the written change (`changed`, called by the announcer for every
stored change): a scope (`running_step`, `operating`) only says which step run or which
operation the changes inside it belong to, so a duplicate message that claims nothing, or an
operation that changes nothing, is seen to do nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ergate_celery.model.job import Job


class Observer(Protocol):
    """What an integration implements; every call is made in the thread doing the work."""

    def submitting(self, job: Job) -> AbstractContextManager[Job]:
        """Around storing and publishing a new job: gives the job to store (its trace
        context added, say)."""

    def running_step(self, job_id: str, step_task: str) -> AbstractContextManager[None]:
        """Around one step message, from before its claim until its outcome is published."""

    def operating(self, sender: str, job_id: str) -> AbstractContextManager[None]:
        """Around an operation on one job by `sender` (release, sweep, cancel, signal,
        retry, resume, a submission handed over at commit)."""

    def changed(self, before: Job | None, after: Job, sender: str, task: Any) -> None:
        """A change of a job was stored by `sender` (`task`: the running Celery task, if
        any); never raises into the caller (the announcer logs what it raises)."""


#: The observer of this process; set by an integration's `instrument()`, None otherwise.
observer: Observer | None = None


def operating(sender: str, job_id: str) -> AbstractContextManager[None]:
    """The observer's scope for an operation on `job_id`, or nothing when none is set."""
    current = observer
    return nullcontext() if current is None else current.operating(sender, job_id)
