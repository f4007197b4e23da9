"""A job as the admin and the console show it: status, progress, current step, errors and a
timeline of its step runs, computed once from the `Job` (no Django needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from ergate_celery.model.job import Job, JobError
from ergate_celery.model.job_status import CANCELLABLE_STATUSES, RETRYABLE_STATUSES, JobStatus

#: A bar is never drawn narrower than this share of the timeline (a 1 ms step stays visible).
MIN_BAR_PERCENT = 0.6


@dataclass(frozen=True)
class TimelineBar:
    """One step run on the job's timeline, placed in percent of the time it spans."""

    step: str
    index: int
    attempt: int
    outcome: str
    """The job's status right after the run; RUNNING for the run going on now."""
    started_at: datetime
    finished_at: datetime | None
    run: int
    """0 for the job's first run, n for the steps run after the n-th `retry_job`."""
    offset: float
    width: float

    @property
    def seconds(self) -> float:
        """How long the run took (so far)."""
        end = self.finished_at or datetime.now(UTC)
        return max((end - self.started_at).total_seconds(), 0.0)

    @property
    def duration_text(self) -> str:
        """`12 ms` under a second, `2.03 s` above."""
        seconds = self.seconds
        return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"

    @property
    def css_class(self) -> str:
        """`ok`, `failed`, `stopped`, `waiting` or `running`, for the bar's colour."""
        if self.outcome == "FAILED":
            return "failed"
        if self.outcome in ("ABORTED", "CANCELLED", "CANCELLING"):
            return "stopped"
        if self.outcome == "SCHEDULED":
            return "waiting"
        if self.outcome == "RUNNING":
            return "running"
        return "ok"


@dataclass(frozen=True)
class JobDisplay:
    """What a job page shows; `job` is there for any other field."""

    job: Job
    status: str
    final: bool
    percent: float
    current_step: str
    error: JobError | None
    earlier_errors: list[JobError]
    timeline: list[TimelineBar]
    retryable: bool
    cancellable: bool
    parked: str | None = None
    """Why a parked job waits (its workflow is paused, or its concurrency key is full)."""

    @property
    def input_json(self) -> str:
        """The input of the current step, as indented JSON."""
        return json.dumps(self.job.input_value, indent=2, ensure_ascii=False, default=str)

    @property
    def result_json(self) -> str:
        """The last return value, as indented JSON."""
        return json.dumps(self.job.last_return_value, indent=2, ensure_ascii=False, default=str)


def display(job: Job, now: datetime | None = None, parked: str | None = None) -> JobDisplay:
    """The page of `job` as of `now` (default: the current time); `parked` says why it waits
    parked (`operations.flow.describe_wait`)."""
    return JobDisplay(
        job=job,
        status=job.status.name,
        final=job.is_final,
        percent=round(job.percent_completed, 1),
        current_step=current_step(job),
        error=job.error,
        earlier_errors=list(job.errors),
        timeline=timeline(job, now or datetime.now(UTC)),
        retryable=job.status in RETRYABLE_STATUSES,
        cancellable=job.status in CANCELLABLE_STATUSES,
        parked=parked,
    )


def current_step(job: Job) -> str:
    """`#2 charge` while steps remain; `(end)` once none does."""
    if job.status is JobStatus.COMPLETED:
        return "(end)"
    name = job.current_step_name
    return f"#{job.current_step} {name}" if name else f"#{job.current_step}"


class _Run(NamedTuple):
    """One step run, in the order of `TimelineBar`'s first fields (`step_index` is its
    `index`: a tuple has an `index` method)."""

    step: str
    step_index: int
    attempt: int
    outcome: str
    started_at: datetime
    finished_at: datetime | None = None


def timeline(job: Job, now: datetime) -> list[TimelineBar]:
    """One bar per step run (`job.timings`), plus the step running now, on a common scale
    from the first start to the last end; runs after a `retry_job` carry its number."""
    runs = [
        _Run(t.step, t.index, t.attempt, t.outcome, t.started_at, t.finished_at)
        for t in job.timings
    ]
    if job.status is JobStatus.RUNNING and job.step_started_at is not None:
        step = job.current_step_name or "?"
        runs.append(_Run(step, job.current_step, job.attempt, "RUNNING", job.step_started_at))
    if not runs:
        return []
    start = min(run.started_at for run in runs)
    end = max(max(run.finished_at or now for run in runs), start)
    span = (end - start).total_seconds() or 1.0
    bars, retry = [], 0
    for run in runs:
        offset = (run.started_at - start).total_seconds() / span * 100
        ended = run.finished_at or now
        width = max((ended - run.started_at).total_seconds() / span * 100, MIN_BAR_PERCENT)
        offset = min(offset, 100 - MIN_BAR_PERCENT)
        bars.append(
            TimelineBar(
                *run,
                run=min(retry, job.retries),
                offset=round(offset, 2),
                width=round(min(width, 100 - offset), 2),
            )
        )
        if run.outcome in {status.name for status in RETRYABLE_STATUSES}:
            retry += 1  # the runs that follow a stop came after a retry_job
    return bars
