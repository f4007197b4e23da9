"""Running differential cases on ergate_celery: on a real worker, or through `WorkflowTester`;
each case's trace (to compare with ergate's) and final job (to compare between the two)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from celery import Celery

import ergate_celery
from ergate_celery import Job
from ergate_celery.testing import WorkflowTester

from ..support import in_process_worker
from .trace import Snapshot, Trace, recorded_snapshots
from .workflows import Case, Recorder

WAIT = 120


class CaseRun(NamedTuple):
    """What one case left: its trace, and its job once final."""

    trace: Trace
    job: Job


class _Cases:
    """The cases' workflows, built with recorders, and what each run of them left."""

    def __init__(self, cases: list[Case]) -> None:
        self.cases = cases
        self.recorders = {case.name: Recorder() for case in cases}
        # One prefix on both sides: errors that name a step read the same.
        self.workflows = {
            case.name: case.builder(
                ergate_celery, self.recorders[case.name], f"celery-{case.name}-"
            )
            for case in cases
        }

    def submit_all(self, submit: Callable[..., Job]) -> dict[str, Job]:
        """Submit each case's job with `submit` (`submit_job`'s arguments)."""
        return {
            case.name: submit(
                self.workflows[case.name].unique_name,
                initial_input_value=case.initial_input_value,
                user_context=case.user_context,
            )
            for case in self.cases
        }

    @contextmanager
    def recording(self) -> Iterator[dict[str, list[Snapshot]]]:
        """Each status write of the cases' jobs while the block runs."""
        names = [workflow.unique_name for workflow in self.workflows.values()]
        with recorded_snapshots(names) as snapshots:
            yield snapshots

    def runs(
        self, snapshots: dict[str, list[Snapshot]], finals: dict[str, Job]
    ) -> dict[str, CaseRun]:
        return {
            case.name: CaseRun(
                Trace.from_recording(
                    self.recorders[case.name],
                    snapshots[self.workflows[case.name].unique_name],
                ),
                finals[case.name],
            )
            for case in self.cases
        }


def run_on_celery(
    cases: list[Case], app: Celery, ergate: ergate_celery.ErgateCelery
) -> dict[str, CaseRun]:
    """Run every case through `submit_job` on one real worker, recording each status write."""
    built = _Cases(cases)
    for workflow in built.workflows.values():
        ergate.register_workflow(workflow)
    with built.recording() as snapshots, in_process_worker(app):
        submitted = built.submit_all(ergate.submit_job)
        finals = {
            name: ergate.wait_for_job(job.id, timeout=WAIT) for name, job in submitted.items()
        }
    return built.runs(snapshots, finals)


def run_on_tester(cases: list[Case]) -> dict[str, CaseRun]:
    """Submit every case to one `WorkflowTester` (their jobs interleave, as on a worker) and
    run them to the end, recording each status write."""
    built = _Cases(cases)
    tester = WorkflowTester(*built.workflows.values())
    with built.recording() as snapshots:
        submitted = built.submit_all(tester.submit)
        tester.run()
    return built.runs(snapshots, {name: tester.get_job(job.id) for name, job in submitted.items()})
