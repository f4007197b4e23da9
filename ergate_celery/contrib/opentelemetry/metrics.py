"""The metrics of jobs and steps, through the OpenTelemetry metrics API.

| name | instrument | unit | attributes |
| --- | --- | --- | --- |
| `ergate.step.duration` | histogram | s | `ergate.workflow`, `ergate.step` |
| `ergate.step.wait` | histogram | s | `ergate.workflow`, `ergate.step` |
| `ergate.jobs.finished` | counter | {job} | `ergate.workflow`, `ergate.job.status` |
| `ergate.jobs.waiting` | gauge | {job} | `ergate.workflow`, `ergate.wait.reason` |

A step's duration runs from its claim to the end of its run (publishing the next step
included), one value per attempt. Its wait runs from the publish of its message to its claim,
less any countdown (a Celery retry's): the publish time travels in the message header
`ergate_published_at`, stamped by the `before_task_publish` receiver here, so a message sent by
a process that is not instrumented has no wait. A job is counted as finished each time it
reaches a final status (a retried job that completes counts again). The waiting jobs are
counted from the store, by `Job.waiting_reason`, in the beat process only (one pass over the
SCHEDULED and QUEUED jobs per export of the metrics), or in any process that asks for it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.operations.listing import every_job
from ergate_celery.stores.listing import JobQuery
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)

#: The message header that carries when a step message was published (seconds since epoch).
PUBLISHED_AT = "ergate_published_at"
#: Histogram buckets (s): the SDK's default ones put everything under 5 s in one bucket.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_WAITING_QUERY = JobQuery(statuses=frozenset({JobStatus.SCHEDULED, JobStatus.QUEUED}))


class JobMetrics:
    """The instruments of one meter, and what records into them."""

    def __init__(
        self, meter: Meter, runtimes: Callable[[], Iterable[Callable[[], Runtime]]]
    ) -> None:
        self.step_duration = meter.create_histogram(
            "ergate.step.duration",
            unit="s",
            description="How long one step attempt ran",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        self.step_wait = meter.create_histogram(
            "ergate.step.wait",
            unit="s",
            description="From the publish of a step's message to its claim by a worker",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        self.jobs_finished = meter.create_counter(
            "ergate.jobs.finished", unit="{job}", description="Jobs that reached a final status"
        )
        meter.create_observable_gauge(
            "ergate.jobs.waiting",
            callbacks=[self._observe_waiting],
            unit="{job}",
            description="Jobs waiting without a step queued or running, by reason",
        )
        #: Count the waiting jobs at each export (set in beat, or by `instrument()`).
        self.count_waiting = False
        self._runtimes = runtimes
        self._seen: set[tuple[str, str]] = set()

    def changed(self, before: Job | None, after: Job) -> None:
        """Count a job that reached a final status with this change."""
        if after.is_final and (before is None or not before.is_final):
            attributes = {
                "ergate.workflow": after.workflow_name,
                "ergate.job.status": after.status.name,
            }
            self.jobs_finished.add(1, attributes)

    def claimed(self, job: Job, request: Any) -> None:
        """Record the wait of the step message `request` (a Celery request) claimed now."""
        published = getattr(request, PUBLISHED_AT, None)
        if not isinstance(published, int | float):
            return
        start = float(published)
        eta = getattr(request, "eta", None)
        if isinstance(eta, str):
            start = max(start, datetime.fromisoformat(eta).timestamp())
        attributes = {"ergate.workflow": job.workflow_name, "ergate.step": job.current_step_name}
        self.step_wait.record(max(0.0, time.time() - start), attributes)

    def ran(self, workflow: str, step: str, seconds: float) -> None:
        """Record the duration of one step attempt."""
        self.step_duration.record(seconds, {"ergate.workflow": workflow, "ergate.step": step})

    def _observe_waiting(self, options: CallbackOptions) -> Iterator[Observation]:
        if not self.count_waiting:
            return
        counts: Counter[tuple[str, str]] = Counter()
        for runtime in self._runtimes():
            try:
                counts.update(_waiting(runtime()))
            except Exception:
                # One app whose store cannot be read must not hide the others' counts.
                logger.warning("Could not count the waiting jobs of an app", exc_info=True)
        # A reason seen before and now gone reports 0, rather than vanishing from the graph.
        self._seen.update(counts)
        for workflow, reason in sorted(self._seen):
            attributes = {"ergate.workflow": workflow, "ergate.wait.reason": reason}
            yield Observation(counts[(workflow, reason)], attributes)


def _waiting(rt: Runtime) -> Counter[tuple[str, str]]:
    return Counter(
        (job.workflow_name, reason)
        for job in every_job(rt, _WAITING_QUERY)
        if (reason := job.waiting_reason) is not None
    )


def stamp_publish(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
    """Celery's `before_task_publish` receiver: the publish time of a step message."""
    name = sender if isinstance(sender, str) else getattr(sender, "name", "")
    # Assigned, never kept: a Celery retry resends the headers of the message it retries.
    if isinstance(headers, dict) and name.startswith("ergate."):
        headers[PUBLISHED_AT] = time.time()
