"""Every differential case also runs through `WorkflowTester`: its trace equals ergate 0.6.0's
(steps and inputs, dependency set-up and teardown, every status write with its progress), and
its final job equals the one a real worker leaves (status, values, percent, error)."""

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

import ergate_celery
from ergate_celery import Job

from ..support import cleanup_setup, services_for, setup_conf
from .reference import run_reference
from .runs import CaseRun, run_on_celery, run_on_tester
from .workflows import CASES, ESCAPING_CASES, Case

pytest.importorskip("ergate")

EVERY_CASE = [*CASES, *ESCAPING_CASES]


@pytest.fixture(scope="module")
def tester_runs() -> dict[str, CaseRun]:
    """Every case run to the end through one tester."""
    return run_on_tester(EVERY_CASE)


@pytest.fixture(scope="module")
def worker_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, CaseRun]]:
    """Every case run on a real worker (Redis)."""
    services = services_for(request, "redis")
    app = Celery("differential_tester", set_as_current=True)
    app.conf.update(setup_conf("redis", tmp_path_factory.mktemp("tester-worker"), services))
    try:
        yield run_on_celery(EVERY_CASE, app, ergate_celery.ErgateCelery(app))
    finally:
        cleanup_setup("redis", app, services)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_tester_traces_as_ergate(case: Case, tester_runs: dict[str, CaseRun]) -> None:
    expected = run_reference(case)
    actual = tester_runs[case.name].trace
    assert actual.steps == expected.steps
    assert actual.events == expected.events
    assert actual.snapshots == expected.snapshots
    assert actual.final == expected.final


def _outcome(job: Job) -> dict[str, Any]:
    """What a finished job shows: status, values, progress, its error if any, its step runs."""
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
    case: Case, tester_runs: dict[str, CaseRun], worker_runs: dict[str, CaseRun]
) -> None:
    tested = tester_runs[case.name].job
    assert tested.is_final
    assert _outcome(tested) == _outcome(worker_runs[case.name].job)
