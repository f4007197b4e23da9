"""What the step task body, beat's release and the sweep work with: a store, the settings, a
way to publish a step, and the announcer — not the whole `ErgateCelery`.

`Runtime.apply` is the one path by which a job's status changes: the lifecycle transition
inside the store's compare-and-set, then the announcement of what was written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pydantic_core import PydanticSerializationError

from ergate_celery.exceptions import InvalidInputError, UnknownStepError, UnknownWorkflowError
from ergate_celery.lifecycle.events import Event, MessageRejected, PublishFailed
from ergate_celery.lifecycle.transitions import already_written, moved_on_from, transition
from ergate_celery.model.job import Job, JobError
from ergate_celery.model.workflow import Workflow
from ergate_celery.settings import ErgateSettings
from ergate_celery.stores import JobStore
from ergate_celery.stores.base import TaskResult, Updated
from ergate_celery.stores.redis_publish import sending
from ergate_celery.worker import fan_out
from ergate_celery.worker.announcer import Announcer
from ergate_celery.worker.concurrency import free_slot
from ergate_celery.worker.one_trip import Collect, Sending
from ergate_celery.worker.pausing import PausedWorkflows

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Runtime:
    """The collaborators of everything that changes jobs."""

    store: JobStore
    settings: ErgateSettings
    announce: Announcer
    #: Sends the message of a job's current step (by its step's name).
    publish: Callable[[Job], None]
    #: The paused workflows, cached (None: nothing is ever paused, as in unit tests).
    paused: PausedWorkflows | None = None
    #: The current time of every change and of every decision by time (leases, due times,
    #: idleness): the store's clock unless given another (a test's virtual clock).
    clock: Callable[[], datetime] = None  # type: ignore[assignment]
    #: The registered workflow of a name (`UnknownWorkflowError`), for a step's `FanOut`.
    workflow_of: Callable[[str], Workflow] | None = None
    #: Collects the message of a job's current step for the store's own write (one round
    #: trip on Redis); None: every message is published by `publish`.
    collect: Collect | None = None

    def __post_init__(self) -> None:
        if self.clock is None:
            self.clock = self.store.clock

    def apply(
        self,
        job_id: str,
        event: Event,
        *,
        sender: str,
        now: datetime | None = None,
        assume: Job | None = None,
        result: TaskResult | None = None,
        task: Any = None,
        send: Sending | None = None,
    ) -> Updated:
        """Store the transition of `event` on the job, and announce it when it was written.

        Tried again after an error (see `retrying`), a claim or an outcome whose earlier write
        went through, with its reply lost, is recognised by its token: it is returned, and
        announced, as written now, with `assume` as the job before it — also when the job has
        gone on since (its next step's message went with that write). A child of a fan-out
        that became final is counted on its parent (again, harmlessly, on such a retry).
        With `send`, a job written QUEUED carries its step's message when the store can
        (`send.carried`).
        """
        moment = now or self.clock()
        with sending(send):
            before, after = self.store.update(
                job_id,
                lambda stored: transition(stored, event, moment),
                assume=assume,
                result=result,
            )
        if after is None and before is not None:
            if already_written(before, event):
                before, after = assume, before
            elif assume is not None and moved_on_from(before, event):
                # Announced now, as that write would have been: the job it wrote, again.
                before, after = assume, transition(assume, event, moment)
        if after is not None:
            self.announce(before, after, sender, task)
            ended = after.is_final and (before is None or not before.is_final)
            if ended and after.parent_id is not None:
                fan_out.child_ended(self, after, sender)
            if ended and after.concurrency_key is not None:
                free_slot(self, after)
        return Updated(before, after)

    def sending(self) -> Sending | None:
        """What lets one write carry the message of the job's next step (None: none can)."""
        return None if self.collect is None else Sending(self.collect)

    def retrying(self, what: str, action: Callable[[], T]) -> T:
        """Run `action`, retried with backoff while the broker or backend is unreachable.

        A job must not be left between two states by a blip; the last failure propagates.
        Errors about the data itself (unserializable, oversized) or the definition (a step
        or workflow a deploy removed) are not retried.
        """
        attempts = self.settings.after_step_attempts
        for attempt in range(1, attempts + 1):
            try:
                return action()
            except (
                PydanticSerializationError,
                InvalidInputError,
                UnknownStepError,
                UnknownWorkflowError,
            ):
                raise
            except Exception as exc:
                if attempt == attempts:
                    raise
                delay = min(0.25 * 2 ** (attempt - 1), 8.0)
                logger.warning(
                    "%s failed (%r); try %d of %d in %.2fs", what, exc, attempt + 1, attempts, delay
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def publish_current_step(self, job: Job, sender: str) -> Job | None:
        """Publish the job's current step; a job whose step cannot be published ends FAILED.

        A step or workflow that this process's definition no longer has (removed by a deploy)
        fails the job with `UnknownStep`, and the job as stored then is returned (None when
        the step was published); a broker that stays down fails it with the reason after the
        retries, and the error propagates.
        """
        job_id = str(job.id)
        try:
            self.retrying(
                f"publishing step {_label(job)} of job {job_id}", lambda: self.publish(job)
            )
        except (UnknownStepError, UnknownWorkflowError) as exc:
            error = JobError(type="UnknownStep", message=str(exc), step=job.current_step_name)
            rejected = MessageRejected(error, job.steps_completed)
            return self.apply(job_id, rejected, sender=sender).after or self.store.get(job_id)
        except Exception as exc:
            error = JobError.from_exception(exc, job.current_step_name)
            error = error.model_copy(
                update={"message": f"The next step could not be published: {error.message}"}
            )
            self.apply(job_id, PublishFailed(job.steps_completed, error), sender=sender)
            raise
        return None


def _label(job: Job) -> str:
    return repr(job.current_step_name) if job.current_step_name else f"#{job.current_step}"
