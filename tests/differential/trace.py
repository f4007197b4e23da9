"""What one run of a differential case leaves behind, comparable across implementations.

Both sides (ergate 0.6.0's own runner and ergate_celery) build a `Trace` with
`Trace.from_recording`, so two runs of the same `Case` can be compared with `==`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ergate_celery.signals import step_completed, step_started

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .workflows import Event, Recorder

PERCENT_DIGITS = 6


@dataclass(frozen=True)
class Snapshot:
    """One state-store write: the job's progress fields at that moment.

    `last_return_value` is expected in its JSON form (as the job travels).
    """

    status: str
    current_step: int
    steps_completed: int
    percent_completed: float
    last_return_value: Any

    @classmethod
    def of(
        cls,
        status: Any,
        current_step: int,
        steps_completed: int,
        percent_completed: float,
        last_return_value: Any,
    ) -> Snapshot:
        """Normalise: `status` may be an enum member (its `.name` is used) or a name."""
        name = status if isinstance(status, str) else status.name
        return cls(
            status=name,
            current_step=int(current_step),
            steps_completed=int(steps_completed),
            percent_completed=round(float(percent_completed), PERCENT_DIGITS),
            last_return_value=last_return_value,
        )

    @classmethod
    def from_job(cls, job: Any, last_return_value: Any) -> Snapshot:
        """Take status/current_step/steps_completed/percent_completed from a job object."""
        return cls.of(
            job.status,
            job.current_step,
            job.steps_completed,
            job.percent_completed,
            last_return_value,
        )


@dataclass(frozen=True)
class Trace:
    """Everything observable about one case run.

    `steps`: (step name, deep copy of the input it received), in call order.
    `events`: the recorder's full event log in order, as (kind, name, detail);
    kinds are "step", "setup", "teardown" and "event" (see `Recorder`).
    `snapshots`: every state-store write, in order; `final` is the last one.
    """

    steps: tuple[tuple[str, Any], ...]
    events: tuple[Event, ...]
    snapshots: tuple[Snapshot, ...]
    final: Snapshot

    @classmethod
    def from_recording(cls, rec: Recorder, snapshots: Iterable[Snapshot]) -> Trace:
        taken = tuple(snapshots)
        if not taken:
            raise ValueError("a trace needs at least one state-store snapshot")
        return cls(steps=rec.steps, events=rec.events, snapshots=taken, final=taken[-1])


@contextmanager
def recorded_snapshots(workflow_names: Iterable[str]) -> Iterator[dict[str, list[Snapshot]]]:
    """While the block runs, a `Snapshot` of every job of these workflows at each start and end
    of a step (ergate_celery's two status writes per step), by workflow name."""
    snapshots: dict[str, list[Snapshot]] = {name: [] for name in workflow_names}

    def record(sender: str, job: Any, **kwargs: Any) -> None:
        if job.workflow_name in snapshots:
            snapshots[job.workflow_name].append(Snapshot.from_job(job, job.last_return_value))

    step_started.connect(record, weak=False)
    step_completed.connect(record, weak=False)
    try:
        yield snapshots
    finally:
        step_started.disconnect(record)
        step_completed.disconnect(record)
