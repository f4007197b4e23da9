"""What every store does for flow control, written once on two primitives of each backend:
the concurrency slots of a key (a small document changed by compare-and-set, the rules in
`lifecycle/slots.py`), and a submission that parks its job when its workflow is paused."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ergate_celery.lifecycle.slots import Slots, free, take
from ergate_celery.model.job import Job

#: A slots document as a backend stores it (None: there is none).
Raw = str | bytes | None


class FlowControl(ABC):
    """Concurrency slots and the paused check of a submission, on a backend's primitives."""

    # The primitives.

    @abstractmethod
    def _read_slots(self, name: str) -> Raw:
        """The slots document `name` as stored, or None."""

    @abstractmethod
    def _swap_slots(self, name: str, expected: Raw, new: str | None) -> bool:
        """Write `new` (None: remove the document) if the stored document is `expected`
        (None: there is none); whether it was written. One atomic step on the backend."""

    @abstractmethod
    def _insert(self, job: Job) -> bool:
        """See `BaseJobStore._insert`."""

    @abstractmethod
    def paused_workflows(self) -> set[str]:
        """See `JobStore.paused_workflows`."""

    # The logic on top of them.

    def slots(self, name: str) -> Slots:
        """Who holds and who waits for the slots `name` (a workflow's key)."""
        return Slots.decode(self._read_slots(name))

    def take_slot(self, name: str, job_id: str, submitted_at: str, limit: int) -> bool:
        """Whether `job_id` holds a slot of `name` (taken now if fewer than `limit` are held);
        if not, it waits in line, by `submitted_at` (see `lifecycle.slots.take`)."""
        while True:
            raw = self._read_slots(name)
            new, holds = take(Slots.decode(raw), job_id, submitted_at, limit)
            if new is None or self._swap_slots(name, raw, new.encode()):
                return holds

    def free_slot(self, name: str, job_id: str) -> list[str]:
        """Free the slot of `job_id` (or its place in line); the jobs that take the freed
        slots, oldest first, to be started by the caller."""
        while True:
            raw = self._read_slots(name)
            new, promoted = free(Slots.decode(raw), job_id)
            if new is None:
                return []
            if self._swap_slots(name, raw, None if new.empty else new.encode()):
                return promoted

    def _created(self, job: Job, unless_paused: bool) -> Job | None:
        """The job as stored (parked, if `unless_paused` and its workflow is paused), or None
        when its id is taken."""
        if unless_paused:
            return self._insert_unless_paused(job)
        return job if self._insert(job) else None

    def _insert_unless_paused(self, job: Job) -> Job | None:
        """Store `job`, parked if its workflow is paused now; the job stored, or None if its
        id is taken. Here by reading the paused set first: a pause that returned before is
        seen (a backend may do both in one round trip)."""
        if job.workflow_name in self.paused_workflows():
            job = job.model_copy(update={"parked": True})
        return job if self._insert(job) else None
