"""Every differential case also runs through `WorkflowTester`: its trace equals ergate 0.6.0's
(steps and inputs, dependency set-up and teardown, every status write with its progress), and
its final job equals the one a real worker leaves (status, values, percent, error)."""

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

import ergate_celery
from ergate_celery import Job
from ergate_celery.testing import WorkflowTester

from ..support import cleanup_setup, services_for, setup_conf
from .reference import run_reference
from .test_against_ergate import run_on_celery
from .trace import Trace, recorded_snapshots
from .workflows import CASES, ESCAPING_CASES, Case, Recorder

pytest.importorskip("ergate")

EVERY_CASE = [*CASES, *ESCAPING_CASES]


def _prefix(case: Case) -> str:
    """The prefix of the case's workflow names: `run_on_celery`'s, so that errors naming the
    step read the same on both sides."""
    return f"celery-{case.name}-"


@pytest.fixture(scope="module")
def tester_runs() -> dict[str, tuple[Trace, Job]]:
    """Every case submitted to one tester (their jobs interleave, as on a worker), run to the
    end; each case's trace and final job."""
    recorders = {case.name: Recorder() for case in EVERY_CASE}
    tester = WorkflowTester()
    workflows = {}
    for case in EVERY_CASE:
        workflows[case.name] = case.builder(ergate_celery, recorders[case.name], _prefix(case))
        tester.register(workflows[case.name])
    names = [workflow.unique_name for workflow in workflows.values()]
    with recorded_snapshots(names) as snapshots:
        jobs = {
            case.name: tester.submit(
                workflows[case.name].unique_name,
                initial_input_value=case.initial_input_value,
                user_context=case.user_context,
            )
            for case in EVERY_CASE
        }
        tester.run()
    return {
        case.name: (
            Trace.from_recording(recorders[case.name], snapshots[workflows[case.name].unique_name]),
            tester.get_job(str(jobs[case.name].id)),
        )
        for case in EVERY_CASE
    }


@pytest.fixture(scope="module")
def worker_jobs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Job]]:
    """Every case run on a real worker (Redis); each case's final job."""
    services = services_for(request, "redis")
    app = Celery("differential_tester", set_as_current=True)
    app.conf.update(setup_conf("redis", tmp_path_factory.mktemp("tester-worker"), services))
    ergate = ergate_celery.ErgateCelery(app)
    try:
        run_on_celery(EVERY_CASE, app, ergate)
        names = list(ergate.workflows)
        finals = {}
        for case in EVERY_CASE:
            [name] = [name for name in names if name.startswith(_prefix(case))]
            [job] = ergate.list_jobs(workflow=name).jobs
            finals[case.name] = job
        yield finals
    finally:
        cleanup_setup("redis", app, services)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_tester_traces_as_ergate(case: Case, tester_runs: dict[str, tuple[Trace, Job]]) -> None:
    expected = run_reference(case)
    actual, _ = tester_runs[case.name]
    assert actual.steps == expected.steps
    assert actual.events == expected.events
    assert actual.snapshots == expected.snapshots
    assert actual.final == expected.final


def _outcome(job: Job) -> dict[str, Any]:
    """What a finished job shows: status, values, progress, and its error if any."""
    error = job.error
    return {
        "status": job.status,
        "current_step": job.current_step,
        "current_step_name": job.current_step_name,
        "steps_completed": job.steps_completed,
        "percent_completed": job.percent_completed,
        "last_return_value": job.last_return_value,
        "initial_input_value": job.initial_input_value,
        "user_context": job.user_context,
        "error": None if error is None else (error.type, error.message, error.step),
        "steps": [(timing.step, timing.attempt, timing.outcome) for timing in job.timings],
    }


@pytest.mark.parametrize("case", EVERY_CASE, ids=[case.name for case in EVERY_CASE])
def test_the_tester_ends_each_job_as_a_worker(
    case: Case, tester_runs: dict[str, tuple[Trace, Job]], worker_jobs: dict[str, Job]
) -> None:
    _, tested = tester_runs[case.name]
    assert tested.is_final
    assert _outcome(tested) == _outcome(worker_jobs[case.name])
