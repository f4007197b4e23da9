"""A step's message written with its job's record in one round trip, when the broker is the
result backend's Redis (`ergate_redis_one_trip`); elsewhere kombu publishes it after the write.

The step's outcome with the next step's message, and a submission with its first message:
no moment where the record says QUEUED and no message exists. The other publishes (a retry,
a resume, release, the sweep, fan-out children) stay with kombu.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.model.workflow_step import WorkflowStep
from ergate_celery.settings import ErgateSettings
from ergate_celery.stores.redis import RedisJobStore
from ergate_celery.stores.redis_publish import Collected, RedisPublisher
from ergate_celery.worker.step_message import step_message
from ergate_celery.worker.step_results import display_options, step_task_id

logger = logging.getLogger(__name__)

#: The message of a job's current step, collected for the store's script
#: (`RedisPublisher.collect`); None: kombu publishes it.
Collect = Callable[[Job], Collected | None]


def step_options(job: Job, step: WorkflowStep[Any, Any], show: bool) -> dict[str, Any]:
    """The `apply_async` options of the message of the job's current step, `step`."""
    options = display_options(job, step, show)
    if job.priority is not None:
        options["priority"] = job.priority
    return options


def collector(
    app: Any,
    store: Any,
    settings: ErgateSettings,
    step_of: Callable[[Job], WorkflowStep[Any, Any]],
) -> Collect | None:
    """How to collect step messages for the store's script; None for a store that cannot
    carry them (not Redis). `step_of` finds a job's current step."""
    if not isinstance(store, RedisJobStore):
        return None
    publisher = RedisPublisher(app, store.client, settings.redis_one_trip)

    def collect(job: Job) -> Collected | None:
        if not publisher.usable:
            return None
        step = step_of(job)
        task = app.tasks[step.task_name]
        options = step_options(job, step, settings.show_task_args)
        args = (step_message(job, settings.show_task_args),)
        if not publisher.direct(task, args, options):
            return None
        task_id = step_task_id(job)
        # Collecting sends nothing (the script does): kombu's retry wrapper has nothing to
        # retry, and costs a tenth of the collection. Only the first message of a queue
        # declares it on the broker; if that fails, kombu publishes after the write, retrying.
        return publisher.collect(
            task.name,
            lambda producer: task.apply_async(
                args=args, task_id=task_id, producer=producer, retry=False, **options
            ),
        )

    return collect


class Sending:
    """The message that goes with one write of a job (`stores.redis_publish.sending`), and
    whether the job written carried it (then kombu must not publish it again).

    A write tried again after a lost reply is recognised by its token: the message went with
    that write, which is the one whose message was collected last."""

    def __init__(self, collect: Collect) -> None:
        self._collect = collect
        self._task_id: str | None = None
        #: The last message collected, by its task id: a write tried again (a lost reply, a
        #: compare-and-set that lost a race) sends that same message, and Celery's publish
        #: signals are not sent a second time for it.
        self._collected: tuple[str, Collected] | None = None

    def __call__(self, job: Job) -> bytes | None:
        self._task_id = None
        if job.status is not JobStatus.QUEUED or job.parked:
            return None
        task_id = step_task_id(job)
        if self._collected is not None and self._collected[0] == task_id:
            collected: Collected | None = self._collected[1]
        else:
            try:
                collected = self._collect(job)
            except Exception as exc:
                # Published by kombu after the write instead (which reports what is wrong).
                logger.debug("Step message of job %s left to kombu: %r", job.id, exc)
                return None
            if collected is not None:
                self._collected = (task_id, collected)
        if collected is None:
            return None
        self._task_id = task_id
        return collected.commands

    def carried(self, job: Job) -> bool:
        """Whether the write of `job` (as stored) carried the message of its current step;
        when it did, Celery's `after_task_publish` for that message is sent now (once)."""
        if job.status is not JobStatus.QUEUED or job.parked:  # the script sent nothing
            return False
        task_id = step_task_id(job)
        if self._task_id is None or self._task_id != task_id or self._collected is None:
            return False
        self._collected[1].sent()
        return True
