"""Bad input to `WorkflowTester` gives a clear error, and nothing is stored or run."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ergate_celery import (
    DuplicateJobError,
    InvalidDefinitionError,
    InvalidInputError,
    JobNotFoundError,
    JobStateError,
    UnknownWorkflowError,
    Workflow,
)
from ergate_celery.settings import ImproperlyConfiguredError
from ergate_celery.testing import WorkflowTester

START = datetime(2030, 1, 1, tzinfo=UTC)


def _workflow(name: str = "orders") -> Workflow:
    workflow = Workflow(unique_name=name)

    @workflow.step
    def only(value: dict[str, Any]) -> dict[str, Any]:
        return value

    return workflow


@pytest.fixture
def tester() -> WorkflowTester:
    return WorkflowTester(_workflow(), now=START)


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"workflows": ["orders"]}, TypeError, "takes Workflow objects, got str"),
        ({"now": "2030-01-01"}, TypeError, "now must be a datetime, got str"),
        ({"settings": ["ergate_timings_kept"]}, TypeError, "a dict of ergate_\\* settings"),
        ({"settings": {"broker_url": "redis://"}}, ValueError, "ergate_\\* settings only"),
        ({"settings": {"ergate_timings_kept": "ten"}}, ImproperlyConfiguredError, "timings_kept"),
    ],
)
def test_a_bad_tester_is_refused(arguments: dict[str, Any], error: type, match: str) -> None:
    workflows = arguments.pop("workflows", [])
    with pytest.raises(error, match=match):
        WorkflowTester(*workflows, **arguments)


def test_a_naive_start_is_utc() -> None:
    assert WorkflowTester(now=datetime(2030, 1, 1)).now == START


def test_a_second_workflow_of_the_same_name_is_refused(tester: WorkflowTester) -> None:
    with pytest.raises(InvalidDefinitionError, match="already registered"):
        tester.register(_workflow())
    with pytest.raises(TypeError, match="got int"):
        tester.register(17)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "arguments", "error", "match"),
    [
        ("nope", {}, UnknownWorkflowError, r"'nope' .*registered: orders.*register\(\)"),
        (17, {}, TypeError, "workflow name is a string"),
        (
            "orders",
            {"initial_input_value": {"at": datetime(2030, 1, 1)}},
            InvalidInputError,
            "JSON",
        ),
        ("orders", {"initial_input_value": [1, 2]}, InvalidInputError, "does not fit the input"),
        ("orders", {"initial_input_value": {}, "id": 17}, InvalidInputError, "id must be a string"),
        ("orders", {"tags": {"order": 17}}, InvalidInputError, "str to str"),
        ("orders", {"requested_start_time": "tomorrow"}, InvalidInputError, "datetime"),
    ],
)
def test_a_bad_submission_is_refused_and_nothing_runs(
    tester: WorkflowTester, name: Any, arguments: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        tester.submit(name, **arguments)
    assert tester.list_jobs().jobs == []
    assert tester.run() == 0


def test_a_taken_id_is_refused_and_the_job_untouched(tester: WorkflowTester) -> None:
    tester.submit("orders", initial_input_value={"n": 1}, id="order-1")
    with pytest.raises(DuplicateJobError, match="already exists"):
        tester.submit("orders", initial_input_value={"n": 2}, id="order-1")
    assert tester.get_job("order-1").initial_input_value == {"n": 1}
    assert tester.run() == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((-1,), {}, ValueError, "only moves forward"),
        ((timedelta(seconds=-1),), {}, ValueError, "only moves forward"),
        ((), {"days": -1}, ValueError, "only moves forward"),
        (("60",), {}, TypeError, "timedelta or a number of seconds, got str"),
        ((True,), {}, TypeError, "got bool"),
        ((), {"seconds": float("nan")}, ValueError, "finite"),
        ((float("inf"),), {}, ValueError, "finite"),
        ((), {"hours": "2"}, TypeError, "hours must be a number"),
    ],
)
def test_a_bad_advance_is_refused_and_the_clock_stays(
    tester: WorkflowTester, args: tuple[Any, ...], kwargs: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        tester.advance(*args, **kwargs)
    assert tester.now == START


def test_unknown_jobs_and_wrong_ids_are_clear_errors(tester: WorkflowTester) -> None:
    for call in (
        lambda: tester.get_job("nope"),
        lambda: tester.signal("nope", "approved"),
        lambda: tester.cancel("nope"),
    ):
        with pytest.raises(JobNotFoundError, match="'nope'"):
            call()
    for call in (
        lambda: tester.get_job(17),  # type: ignore[arg-type]
        lambda: tester.signal(17, "approved"),  # type: ignore[arg-type]
        lambda: tester.cancel(17),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError, match="job id is a string, got int"):
            call()


def test_bad_signals_are_refused(tester: WorkflowTester) -> None:
    job = tester.submit("orders", initial_input_value={}, id="order-1")
    with pytest.raises(InvalidInputError, match="JSON"):
        tester.signal(job.id, "approved", {"at": datetime(2030, 1, 1)})
    with pytest.raises(InvalidInputError):
        tester.signal(job.id, "", {})
    tester.run()
    with pytest.raises(JobStateError, match="already COMPLETED"):
        tester.signal(job.id, "approved", {})


def test_bad_list_filters_are_refused(tester: WorkflowTester) -> None:
    with pytest.raises(UnknownWorkflowError, match="'nope'"):
        tester.list_jobs(workflow="nope")
    with pytest.raises(InvalidInputError, match="status 'BOGUS'"):
        tester.list_jobs(status="BOGUS")
    with pytest.raises(InvalidInputError, match="limit"):
        tester.list_jobs(limit=0)
