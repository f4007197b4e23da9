"""Step messages for a step task this worker does not have: a worker that never imported the
workflows module (no `autodiscover_workflows`), or an old worker while a deploy adds a
workflow or a step.

Celery drops such a message and logs "Received unregistered task" with the whole message
body, which for a step is the job (its input and user context). Here, through Celery's own
extension points: a logging filter on Celery's consumer logger replaces that line with one
WARNING that names the task and not the body, and a `task_unknown` receiver hands a copy of
the message back to the queue a few seconds later (at once when the worker shuts down), so a
worker that has the step runs it. Only after `ergate_unknown_step_wait` seconds of that does
the job end FAILED, with an error that says to import the workflows module first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from celery import Celery
from celery.signals import task_unknown, worker_init, worker_shutting_down
from celery.worker.consumer import consumer as celery_consumer

from ergate_celery.model.job import JobError
from ergate_celery.model.workflow import Workflow
from ergate_celery.worker.rejects import reject_message
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)

#: The text of Celery's "Received unregistered task" error (the stubs do not know it).
UNKNOWN_TASK_ERROR: str = getattr(celery_consumer, "UNKNOWN_TASK_ERROR", "")
#: The Celery logger that prints the body of a message for an unknown task.
CONSUMER_LOGGER = "celery.worker.consumer.consumer"
#: The message header that carries when a worker first found it did not have the step (epoch
#: seconds), kept on each copy handed back, so the wait is bounded across workers.
SINCE_HEADER = "ergate_unknown_since"


class UnknownStepHost(Protocol):
    """What the receiver works with: the app, its workflows and its runtime (an
    `ErgateCelery`)."""

    @property
    def app(self) -> Celery: ...

    @property
    def workflows(self) -> dict[str, Workflow]: ...

    @property
    def runtime(self) -> Runtime: ...


class UnknownStepLogFilter(logging.Filter):
    """Turns Celery's "Received unregistered task" error for an `ergate.` task into one
    WARNING without the message body (a step's body is the job: input, user context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        unknown_task = bool(UNKNOWN_TASK_ERROR) and record.msg == UNKNOWN_TASK_ERROR
        if not unknown_task or not isinstance(record.args, tuple):
            return True
        missing = record.args[0] if record.args else None
        name = missing.args[0] if isinstance(missing, KeyError) and missing.args else None
        if not isinstance(name, str) or not name.startswith("ergate."):
            return True
        record.msg = (
            "Received a message for step task %s, which this worker does not have (its "
            "workflow is not registered in this worker); the message body is not logged: it "
            "holds the job's input and context"
        )
        record.args = (name,)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install(host: UnknownStepHost) -> None:
    """Connect the `task_unknown` receiver for `host`'s app; put the log filter on Celery's
    consumer logger and flush hand-backs at shutdown (once per process)."""
    task_unknown.connect(partial(on_unknown_task, host), weak=False)
    worker_init.connect(HAND_BACKS.open, weak=False, dispatch_uid=__name__)
    worker_shutting_down.connect(HAND_BACKS.flush, weak=False, dispatch_uid=__name__)
    consumer = logging.getLogger(CONSUMER_LOGGER)
    if not any(isinstance(found, UnknownStepLogFilter) for found in consumer.filters):
        consumer.addFilter(UnknownStepLogFilter())


class HandBacks:
    """The copies a worker will hand back to the queue: on its timer, or all at once when
    the worker shuts down (Celery's `worker_shutting_down`), so none is lost with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Any, Callable[[], None]]] = {}
        self._next = 0
        self._closing = False

    def later(self, timer: Any, delay: float, hand_back: Callable[[], None]) -> None:
        """Run `hand_back` after `delay` s on the worker's `timer`; at once without one, or
        once the worker is shutting down (its timer may never fire)."""
        with self._lock:
            if timer is not None and not self._closing:
                key, self._next = self._next, self._next + 1
                entry = timer.call_after(delay, partial(self._run, key))
                self._pending[key] = (entry, hand_back)
                return
        hand_back()

    def _run(self, key: int) -> None:
        with self._lock:
            found = self._pending.pop(key, None)
        if found is not None:
            found[1]()

    def open(self, **kwargs: Any) -> None:
        """A worker starts in this process: delay hand-backs on its timer again."""
        with self._lock:
            self._closing = False

    def flush(self, **kwargs: Any) -> None:
        """Hand back every pending copy now (the worker is shutting down)."""
        with self._lock:
            self._closing = True
            pending, self._pending = list(self._pending.values()), {}
        for entry, hand_back in pending:
            entry.cancel()
            hand_back()


#: This process's pending hand-backs.
HAND_BACKS = HandBacks()


def retry_interval(wait: float) -> float:
    """Seconds between two hand-backs of one message: a tenth of the wait, 0.2 s to 5 s."""
    return min(max(wait / 10, 0.2), 5.0)


def on_unknown_task(
    host: UnknownStepHost,
    sender: Any = None,
    name: str = "",
    message: Any = None,
    **kwargs: Any,
) -> None:
    """Celery's `task_unknown` receiver: hand an unknown step's message back to the queue
    for a worker that has the step, or, once `ergate_unknown_step_wait` has passed, fail
    its job with what to do."""
    if not name.startswith("ergate.") or message is None:
        return
    if getattr(sender, "app", host.app) is not host.app:
        return
    try:
        body = message.decode()
        payload = body[0][0] if isinstance(body, list | tuple) else body["args"][0]
    except Exception:
        logger.error("Dropped an unreadable message for unknown step task %s", name)
        return
    job_id = payload.get("id") if isinstance(payload, dict) else None
    headers = dict(message.headers or {})
    now = time.time()
    since = headers.get(SINCE_HEADER)
    since = since if isinstance(since, int | float) and since <= now else now
    wait = host.runtime.settings.unknown_step_wait
    if now - since < wait:
        delay = retry_interval(wait)
        logger.warning(
            "Job %s: step task %s is not in this worker; its message goes back to the queue "
            "in %.1f s for a worker that has it (for %.0f s more, ergate_unknown_step_wait)",
            job_id,
            name,
            delay,
            wait - (now - since),
        )
        hand_back = partial(_hand_back, host.app, name, payload, message, since)
        HAND_BACKS.later(getattr(sender, "timer", None), delay, hand_back)
        return
    hop = payload.get("steps_completed") if isinstance(payload, dict) else None
    reject_message(
        host.runtime,
        payload,
        JobError(type="UnknownStep", message=_why(host, name, wait)),
        name,
        hop if isinstance(hop, int) else None,
    )


def _hand_back(app: Celery, name: str, payload: Any, message: Any, since: float) -> None:
    """Publish a copy of the message, as it was, with when its wait began."""
    headers = message.headers or {}
    properties = message.properties or {}
    delivery = message.delivery_info or {}
    try:
        app.send_task(
            name,
            args=(payload,),
            task_id=headers.get("id"),
            headers={SINCE_HEADER: since},
            argsrepr=headers.get("argsrepr"),
            kwargsrepr=headers.get("kwargsrepr"),
            priority=properties.get("priority"),
            queue=delivery.get("routing_key") or None,
        )
    except Exception:
        # The job stays QUEUED without a message: the stuck-job sweep requeues it.
        logger.exception("Could not hand the message of step task %s back to the queue", name)


def _why(host: UnknownStepHost, name: str, wait: float) -> str:
    """The job's error: what was missing, and what to do, most likely cause first."""
    workflow_name = name.removeprefix("ergate.").rpartition(".")[0]
    known = ", ".join(sorted(host.workflows)) or "none"
    waited = f"No worker that took its message in {wait:g} s (ergate_unknown_step_wait) had"
    if workflow_name in host.workflows:
        return (
            f"{waited} step task {name}: workflow {workflow_name!r} has no such step here. A "
            "deploy removed or renamed the step: deploy it again and retry_job, or let the "
            "job go"
        )
    return (
        f"{waited} step task {name} (workflows this worker has: {known}). Import the module "
        f"that defines workflow {workflow_name!r} in the worker: call "
        "ErgateCelery.autodiscover_workflows([...]) (or register_workflow) in the module that "
        "creates the Celery app; if a deploy removed or renamed it, deploy it again and retry_job"
    )
