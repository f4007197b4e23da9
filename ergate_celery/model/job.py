"""The job: one execution of a workflow, as Ergate's `Job` model plus what Celery needs."""

from __future__ import annotations

import copy
import traceback as traceback_module
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, computed_field

from ergate_celery.model.job_status import JobStatus


class JobError(BaseModel):
    """Why a job failed: the exception's type, message and traceback, and the step."""

    type: str
    message: str
    traceback: str | None = None
    step: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException, step: str | None = None) -> JobError:
        """Describe `exc`, with its traceback when it has one: always something a job can
        store, even when the exception's `__str__` raises or its text is not valid UTF-8."""
        trace = None
        if exc.__traceback__ is not None:
            try:
                trace = "".join(traceback_module.format_exception(exc))
            except Exception:
                trace = "".join(traceback_module.format_tb(exc.__traceback__))
        return cls(
            type=type(exc).__qualname__,
            message=describe(exc),
            traceback=None if trace is None else storable(trace),
            step=step,
        )


def describe(exc: BaseException) -> str:
    """`str(exc)`, or what it is when its `__str__` raises: a reason is always given."""
    try:
        return storable(str(exc))
    except Exception as inner:
        return (
            f"(the {type(exc).__qualname__} raised could not be described: its __str__ "
            f"raised {type(inner).__qualname__})"
        )


def storable(text: str) -> str:
    """`text` as it can be stored in JSON: a lone surrogate becomes a replacement mark."""
    return text.encode("utf-8", "replace").decode("utf-8")


class StepTiming(BaseModel):
    """When one step ran, and how it ended (the job's status right after it)."""

    step: str
    index: int
    started_at: datetime
    finished_at: datetime
    attempt: int
    outcome: str

    @property
    def duration(self) -> float:
        """Seconds the step took."""
        return (self.finished_at - self.started_at).total_seconds()


class Wait(BaseModel):
    """What a SCHEDULED job waits for since a step raised `Sleep` or `WaitForSignal`."""

    step: str
    """The step that raised it (the job continues at the step after it)."""
    since: datetime
    until: datetime | None = None
    """The end of a sleep, or a signal's timeout; None: a signal waited for forever."""
    signal: str | None = None
    """The signal name waited for; None for a sleep."""
    children: int | None = None
    """A fan-out: how many children of the step must end; `until` is then only when the
    children are counted again, in case a notice of one's end was lost with its worker."""
    turn_of: str | None = None
    """A child held back by its parent's `max_in_flight`: it starts when a sibling ends."""

    @property
    def reason(self) -> str:
        """What it waits for, as one word: `children` (a fan-out's parent), `concurrency` (a
        child held back by `max_in_flight`), `signal` or `sleep` (a new kind of wait names
        itself here; metrics and the console group waiting jobs by it)."""
        if self.children is not None:
            return "children"
        if self.turn_of is not None:
            return "concurrency"
        return "signal" if self.signal is not None else "sleep"

    def describe(self) -> str:
        """One line: what, and until when."""
        if self.children is not None:
            return f"its {self.children} children to end, since step {self.step!r}"
        if self.turn_of is not None:
            return f"its turn among the children of job {self.turn_of} (max_in_flight)"
        what = f"signal {self.signal!r}" if self.signal is not None else "a sleep to end"
        end = "forever" if self.until is None else f"until {self.until.isoformat()}"
        if self.signal is not None and self.until is not None:
            end += " (then FAILED: SignalTimeout)"
        return f"{what}, {end}, since step {self.step!r}"


class FanOutState(BaseModel):
    """A step's fan-out, kept on the parent: its children and which of them have ended."""

    step: str
    """The step that raised `FanOut`."""
    hop: int
    """The parent's `steps_completed` when that step ran (a re-run of it is the same one)."""
    workflow: str
    first: int
    """The position of the first child: children are `<parent id>.<first + n>`."""
    count: int
    then: str
    """The step that receives the children's results."""
    max_in_flight: int | None = None
    ended: list[tuple[int, int]] = Field(default_factory=list)
    """The children (positions from 0) that have ended, as sorted half-open ranges."""
    percent_from: float = 0.0
    percent_to: float = 0.0
    check_every: float = 3600.0
    """Seconds between two counts of the children while the parent waits."""

    @property
    def ended_count(self) -> int:
        """How many children have ended."""
        return sum(end - start for start, end in self.ended)

    @property
    def all_ended(self) -> bool:
        """Whether every child has ended."""
        return self.ended_count >= self.count

    def has_ended(self, n: int) -> bool:
        """Whether child `n` (from 0) has ended."""
        return any(start <= n < end for start, end in self.ended)

    def with_ended(self, n: int) -> FanOutState:
        """This state with child `n` ended (merged into the ranges)."""
        ranges = sorted([*self.ended, (n, n + 1)])
        merged: list[tuple[int, int]] = []
        for start, end in ranges:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return self.model_copy(update={"ended": merged})

    def percent(self) -> float:
        """The parent's progress while it waits: the step's share, by children ended."""
        if self.count == 0:
            return self.percent_to
        share = (self.percent_to - self.percent_from) * self.ended_count / self.count
        return min(self.percent_from + share, 100.0)

    def child_id(self, parent_id: str, n: int) -> str:
        """The id of child `n` (from 0) of this fan-out."""
        return f"{parent_id}.{self.first + n}"


class Job(BaseModel):
    """One execution of a workflow; travels between steps as `model_dump(mode="json")`."""

    # The fields a claim writes come first, before any field that can hold user data (the
    # Redis claim script edits them in the stored JSON text, where the first occurrence of
    # each of their keys must be the job's own); readers do not depend on the order.
    id: Any = None
    workflow_name: str
    status: JobStatus = JobStatus.QUEUED
    current_step: int = Field(default=0, ge=0)
    steps_completed: int = Field(default=0, ge=0)
    current_step_name: str | None = None
    """The name of the current step: a job continues at the step of this name in the
    definition the worker runs, so inserting or reordering steps in a deploy is safe."""
    workflow_version: str | None = None
    """The fingerprint of the workflow definition (step names and paths) last run."""
    claim: str | None = None
    """The token of the step run that holds the job while it is RUNNING."""
    lease_until: datetime | None = None
    """Until when that claim holds: its worker renews it while the step runs. On a job
    waiting for its message (a retry's countdown, a message published again by the sweep),
    until when the sweep leaves it alone."""
    attempt: int = Field(default=0, ge=0)
    """How many times the current step has been started (retries and redeliveries count)."""
    started_at: datetime | None = None
    """When its first step started."""
    step_started_at: datetime | None = None
    """When the current step (if RUNNING) started."""
    queued_by: str | None = None
    """The operation that sent the job to its current step, until its publish is done or a
    step run claims it: `retry <token>`, `signal <name> <token>` or `release <token>`. A
    caller killed before publishing leaves it: asking again then publishes the step."""
    deadline: datetime | None = None
    percent_completed: float = Field(default=0.0, ge=0.0, le=100.0)
    initial_input_value: Any = None
    last_return_value: Any = None
    user_context: Any = None
    requested_start_time: datetime | None = None
    error: JobError | None = None
    priority: int | None = Field(default=None, ge=0, le=255)
    recoveries: list[str] = Field(default_factory=list)
    """What the stuck-job sweep did to this job, one line each."""
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    """When it reached a final status."""
    timings: list[StepTiming] = Field(default_factory=list)
    """One entry per completed step run, in order."""
    lost_runs: int = Field(default=0, ge=0)
    """Runs of the current step that ended without an outcome (worker lost, stuck requeue)."""
    republished: int = Field(default=0, ge=0)
    """Times the sweep published the current step's message again while the job waited
    QUEUED; each time it waits twice as long before the next (a backlog is not a loss)."""
    finished_by: str | None = None
    """The claim token of the step run whose outcome is stored last."""
    wait: Wait | None = None
    """What the job waits for while SCHEDULED after a `Sleep` or `WaitForSignal`."""
    signals: dict[str, Any] = Field(default_factory=dict)
    """The payload of each signal received by `signal_job`, by name (the first one wins)."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Labels given at submit (`tags={"order": "A-17"}`), searchable with `list_jobs`."""
    retries: int = Field(default=0, ge=0)
    """How many times `retry_job` sent the job back to the step it stopped at."""
    errors: list[JobError] = Field(default_factory=list)
    """The errors of earlier runs, oldest first: a retry moves `error` here."""
    parent_id: str | None = None
    """The job whose step fanned out this one (its id is `<parent_id>.<position>`)."""
    fan_out: FanOutState | None = None
    """The job's last fan-out: its children, and which have ended."""
    parked: bool = False
    """QUEUED with no message in the broker: its workflow was paused when the step was due
    (`resume_workflow` publishes it), or it waits for a concurrency slot (`waiting_for_slot`)."""
    concurrency_key: str | None = None
    """The job's key under its workflow's `Concurrency` (computed at submit)."""
    waiting_for_slot: bool = False
    """Parked because `Concurrency.limit` jobs of its key are in progress: it starts, oldest
    first, when one of them ends."""
    trace_context: dict[str, str] | None = None
    """The W3C trace context (`traceparent`, `tracestate`) of the span that submitted the job,
    set when tracing is on: every later span of the job joins that trace. A child job given
    its parent's lands in its parent's trace."""

    @property
    def waiting_reason(self) -> str | None:
        """Why the job waits without a step running or queued, as one word (`scheduled`,
        `sleep`, `signal`, `paused`, `concurrency`, or the reason of its `wait`); None when it
        does not wait."""
        if self.parked:
            return "concurrency" if self.waiting_for_slot else "paused"
        if self.status is not JobStatus.SCHEDULED:
            return None
        return "scheduled" if self.wait is None else self.wait.reason

    @computed_field  # type: ignore[prop-decorator]
    @property
    def duration(self) -> float | None:
        """Seconds from submission to the final status, once final."""
        if self.submitted_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.submitted_at).total_seconds()

    def deadline_passed(self, now: datetime) -> bool:
        """True when the job has a deadline and `now` is past it."""
        return self.deadline is not None and now > self.deadline

    def expired(self) -> Job:
        """This job FAILED because it was not started before its deadline."""
        return self.model_copy(
            update={
                "status": JobStatus.FAILED,
                "error": JobError(
                    type="DeadlineExpired",
                    message=f"The job was not started before its deadline {self.deadline}",
                ),
            }
        )

    def get_input_value(self) -> Any:
        """A deep copy of the value the current step receives."""
        return copy.deepcopy(self.input_value)

    @property
    def input_value(self) -> Any:
        """The current step's input: the initial input before any step completed."""
        return self.initial_input_value if self.steps_completed == 0 else self.last_return_value

    @property
    def is_final(self) -> bool:
        """True when no step of this job will run any more."""
        return self.status.is_final
