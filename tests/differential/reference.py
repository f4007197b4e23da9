"""Run a differential `Case` on ergate 0.6.0's own `JobRunner`, in-process."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import ergate
from ergate.job_runner import JobRunner
from ergate.signals.handler import SignalHandler
from ergate.workflow_registry import WorkflowRegistry

from .trace import Snapshot, Trace
from .workflows import Case, Recorder

REFERENCE_PREFIX = "reference."
MAX_RUNS = 1000
"""Guard against a runaway loop; every real case needs a handful of `_run_job` calls."""

# ergate logs failed steps with LOG.exception; without any handler the logging module's
# last-resort handler would print them to stderr. A NullHandler keeps library code silent
# while still propagating records (pytest's caplog keeps working).
logging.getLogger("ergate").addHandler(logging.NullHandler())


class MemoryQueue:
    """A FIFO holding jobs as JSON-mode dicts, exactly as a real queue round-trips them."""

    def __init__(self) -> None:
        self._items: deque[dict[str, Any]] = deque()

    def put(self, job: ergate.Job) -> None:
        self._items.append(job.model_dump(mode="json"))

    def get_one(self) -> ergate.Job:
        return ergate.Job.model_validate(self._items.popleft())

    def __len__(self) -> int:
        return len(self._items)


class SnapshotStore:
    """A state store recording a `Snapshot` of every `update(job)`."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def update(self, job: ergate.Job) -> None:
        dumped = job.model_dump(mode="json")
        self.snapshots.append(Snapshot.from_job(job, dumped["last_return_value"]))


def run_reference(case: Case) -> Trace:
    """Run `case` to the end on ergate's `JobRunner._run_job`, one queued job at a time.

    Exceptions that escape `_run_job` (e.g. unknown step) are not caught.
    """
    rec = Recorder()
    workflow = case.builder(ergate, rec, REFERENCE_PREFIX)
    registry = WorkflowRegistry()
    registry.register(workflow)  # finalizes: computes the workflow's paths

    queue = MemoryQueue()
    store = SnapshotStore()
    runner: JobRunner[ergate.Job] = JobRunner(queue, registry, store, SignalHandler())

    queue.put(
        ergate.Job(
            workflow_name=workflow.unique_name,
            initial_input_value=case.initial_input_value,
            user_context=case.user_context,
        )
    )
    runs = 0
    while queue:
        runs += 1
        if runs > MAX_RUNS:
            raise RuntimeError(f"case {case.name!r} did not finish in {MAX_RUNS} runs")
        runner._run_job(queue.get_one())

    return Trace.from_recording(rec, store.snapshots)
