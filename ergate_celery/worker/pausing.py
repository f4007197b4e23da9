"""The paused workflows as a process sees them: read from the store, trusted for
`ergate_pause_refresh` seconds, so that a step pays no extra round trip for pausing."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ergate_celery.lifecycle.events import Park
from ergate_celery.model.job import Job
from ergate_celery.stores import JobStore
from ergate_celery.worker.rejects import dropped_because

if TYPE_CHECKING:
    from ergate_celery.model.workflow_step import WorkflowStep
    from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)


class PausedWorkflows:
    """A cached copy of the store's paused set; `holds(name)` reads the store at most once per
    `refresh` seconds (per process), never once per step."""

    def __init__(self, store: JobStore, refresh: float) -> None:
        self.store = store
        self.refresh = refresh
        self._names: frozenset[str] = frozenset()
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def current(self) -> frozenset[str]:
        """The paused workflows, as read at most `refresh` seconds ago."""
        if time.monotonic() - self._read_at >= self.refresh:
            with self._lock:
                if time.monotonic() - self._read_at >= self.refresh:
                    self._names = frozenset(self.store.paused_workflows())
                    self._read_at = time.monotonic()
        return self._names

    def holds(self, workflow_name: str) -> bool:
        """Whether `workflow_name` is paused (as of at most `refresh` seconds ago)."""
        return workflow_name in self.current()

    def forget(self) -> None:
        """Read the store again at the next question (after this process paused or resumed)."""
        self._read_at = float("-inf")


def park(rt: Runtime, step: WorkflowStep[Any, Any], message: Job) -> None:
    """The workflow is paused: the job waits QUEUED, without a message, for resume_workflow."""
    job_id = str(message.id)
    park = Park(step.name, message.steps_completed)
    before, after = rt.retrying(
        f"parking {step} of job {job_id}",
        lambda: rt.apply(job_id, park, sender=step.task_name, assume=message),
    )
    if after is not None:
        logger.info(
            "Parked job %s at %s: workflow %s is paused", job_id, step, step.workflow.unique_name
        )
    else:
        logger.warning(
            "Dropped a message for %s of job %s while its workflow is paused: %s",
            step,
            job_id,
            "already parked"
            if before is not None and before.parked
            else dropped_because(before, message),
        )
