"""Every case runs on ergate 0.6.0's own runner and on ergate_celery with a real worker;
the traces must be equal: steps run and their inputs, dependency set-up and teardown, every
status write with its progress fields, and the final state."""

from collections.abc import Iterator

import pytest
from celery import Celery

import ergate_celery

from ..support import SETUPS, cleanup_setup, in_process_worker, services_for, setup_conf
from .reference import run_reference
from .trace import Trace, recorded_snapshots
from .workflows import CASES, ESCAPING_CASES, Case, Recorder

pytest.importorskip("ergate")

WAIT = 120


def run_on_celery(
    cases: list[Case], app: Celery, ergate: ergate_celery.ErgateCelery
) -> dict[str, Trace]:
    """Run every case through `submit_job` on one real worker, recording each status write."""
    recorders = {case.name: Recorder() for case in cases}
    workflows = {
        case.name: case.builder(ergate_celery, recorders[case.name], f"celery-{case.name}-")
        for case in cases
    }
    for workflow in workflows.values():
        ergate.register_workflow(workflow)
    names = [workflow.unique_name for workflow in workflows.values()]
    with recorded_snapshots(names) as snapshots, in_process_worker(app):
        submitted = {
            case.name: ergate.submit_job(
                workflows[case.name].unique_name,
                initial_input_value=case.initial_input_value,
                user_context=case.user_context,
            )
            for case in cases
        }
        for job in submitted.values():
            ergate.wait_for_job(job.id, timeout=WAIT)
    return {
        case.name: Trace.from_recording(
            recorders[case.name], snapshots[workflows[case.name].unique_name]
        )
        for case in cases
    }


@pytest.fixture(scope="module", params=SETUPS)
def celery_traces(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Trace]]:
    """All cases, run once per setup on one worker (jobs of different cases interleave)."""
    name = str(request.param)
    services = services_for(request, name)
    app = Celery(f"differential_{name}", set_as_current=True)
    app.conf.update(setup_conf(name, tmp_path_factory.mktemp(f"differential-{name}"), services))
    ergate = ergate_celery.ErgateCelery(app)
    try:
        yield run_on_celery([*CASES, *ESCAPING_CASES], app, ergate)
    finally:
        cleanup_setup(name, app, services)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_same_trace_as_ergate(case: Case, celery_traces: dict[str, Trace]) -> None:
    expected = run_reference(case)
    actual = celery_traces[case.name]
    assert actual.steps == expected.steps
    assert actual.events == expected.events
    assert actual.snapshots == expected.snapshots
    assert actual.final == expected.final


def test_past_the_last_step_completes_where_ergate_crashes(
    celery_traces: dict[str, Trace],
) -> None:
    # A last step hinted without NextStepPath that returns normally leaves ergate 0.6's job
    # QUEUED beyond its last step, and its runner raises KeyError. Here the job completes.
    (case,) = ESCAPING_CASES
    with pytest.raises(KeyError):
        run_reference(case)
    actual = celery_traces[case.name]
    assert actual.final.status == "COMPLETED"
    assert actual.final.percent_completed == 100.0
    assert [name for name, _ in actual.steps] == ["a", "b"]
