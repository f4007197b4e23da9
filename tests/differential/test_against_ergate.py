"""Every case runs on ergate 0.6.0's own runner and on ergate_celery with a real worker;
the traces must be equal: steps run and their inputs, dependency set-up and teardown, every
status write with its progress fields, and the final state."""

from collections.abc import Iterator

import pytest
from celery import Celery

import ergate_celery

from ..support import SETUPS, cleanup_setup, services_for, setup_conf
from .reference import run_reference
from .runs import run_on_celery
from .trace import Trace
from .workflows import CASES, ESCAPING_CASES, Case

pytest.importorskip("ergate")


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
        runs = run_on_celery([*CASES, *ESCAPING_CASES], app, ergate)
        yield {name: run.trace for name, run in runs.items()}
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
