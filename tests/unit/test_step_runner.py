"""The pure step path: `run_step` then `advance`, without Celery."""

from collections.abc import Iterator
from typing import Annotated, Any

import pytest

from ergate_celery import (
    AbortJob,
    Context,
    Depends,
    GoToEnd,
    GoToEndPath,
    GoToStep,
    GoToStepPath,
    Job,
    JobStatus,
    Workflow,
)
from ergate_celery.lifecycle.advance import Raised, advance, run_step


def _linear(n: int) -> Workflow:
    workflow = Workflow(unique_name=f"linear{n}")
    for i in range(n):

        def step(x: int) -> int:
            return x + 1

        step.__name__ = f"s{i}"
        workflow.step(step)
    workflow.validate()
    return workflow


def _run(workflow: Workflow, job: Job) -> Job:
    step = workflow[job.current_step]
    return advance(job, workflow, run_step(step, job.get_input_value(), job.user_context))


def test_linear_progress_matches_ergate_arithmetic() -> None:
    workflow = _linear(3)
    job = Job(workflow_name=workflow.unique_name, initial_input_value=0)
    seen = []
    while job.status is JobStatus.QUEUED:
        job = _run(workflow, job)
        seen.append((job.current_step, job.steps_completed, round(job.percent_completed, 4)))
    assert seen == [(1, 1, 33.3333), (2, 2, 66.6667), (3, 3, 100.0)]
    assert job.status is JobStatus.COMPLETED
    assert job.last_return_value == 3


def test_advance_does_not_modify_the_given_job() -> None:
    workflow = _linear(2)
    job = Job(workflow_name=workflow.unique_name, initial_input_value=1)
    after = _run(workflow, job)
    assert job.steps_completed == 0
    assert after.steps_completed == 1


def test_go_to_end_completes_and_keeps_ergates_current_step() -> None:
    workflow = Workflow(unique_name="end")

    @workflow.step
    def first(x: int) -> int:
        return x

    @workflow.step
    def second(x: int) -> int:
        raise GoToEnd(retval="done")

    @workflow.step
    def third(x: int) -> int:
        return x

    job = _run(workflow, Job(workflow_name="end", initial_input_value=1))
    job = _run(workflow, job)
    assert job.status is JobStatus.COMPLETED
    assert job.percent_completed == 100.0
    assert job.last_return_value == "done"
    # Ergate sets current_step to the old steps_completed on GoToEnd.
    assert (job.current_step, job.steps_completed) == (1, 2)


def test_go_to_step_uses_hint_for_prediction() -> None:
    workflow = Workflow(unique_name="hint")

    @workflow.step(paths=[GoToStepPath("last")])
    def first(x: int) -> int:
        raise GoToStep(last, retval=x)

    @workflow.step
    def middle(x: int) -> int:
        return x

    @workflow.step
    def last(x: int) -> int:
        return x

    job = _run(workflow, Job(workflow_name="hint", initial_input_value=1))
    assert job.current_step == 2
    assert job.percent_completed == 50.0  # the hinted route: first, last


def test_backward_go_to_step_fails_the_job() -> None:
    workflow = Workflow(unique_name="back")

    @workflow.step
    def first(x: int) -> int:
        return x

    @workflow.step
    def second(x: int) -> int:
        raise GoToStep(first)

    job = _run(workflow, _run(workflow, Job(workflow_name="back", initial_input_value=1)))
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.type == "ReverseGoToError"
    assert job.error.step == "second"


def test_abort_keeps_progress_and_records_message() -> None:
    workflow = Workflow(unique_name="abort")

    @workflow.step
    def only(x: int) -> int:
        raise AbortJob("customer withdrew")

    job = _run(workflow, Job(workflow_name="abort", initial_input_value=1))
    assert job.status is JobStatus.ABORTED
    assert job.error is not None
    assert job.error.message == "customer withdrew"
    assert job.steps_completed == 0


def test_raising_step_records_type_message_and_traceback() -> None:
    workflow = Workflow(unique_name="boom")

    @workflow.step
    def only(x: int) -> int:
        raise KeyError("missing-sku")

    job = _run(workflow, Job(workflow_name="boom", initial_input_value=1))
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.type == "KeyError"
    assert "missing-sku" in job.error.message
    assert job.error.traceback is not None
    assert "raise KeyError" in job.error.traceback


def test_dependencies_nest_cache_and_tear_down_on_error() -> None:
    events: list[str] = []

    def settings(ctx: Annotated[dict[str, Any], Context()]) -> Iterator[str]:
        events.append("settings up")
        yield ctx["region"]
        events.append("settings down")

    def client(region: Annotated[str, Depends(settings)], x: int) -> Iterator[str]:
        events.append("client up")
        try:
            yield f"{region}:{x}"
        finally:
            events.append("client down")

    workflow = Workflow(unique_name="deps")

    @workflow.step
    def only(
        x: int,
        a: Annotated[str, Depends(client)],
        b: Annotated[str, Depends(client)],
        r: Annotated[str, Depends(settings)],
    ) -> int:
        events.append(f"step {a} {b} {r}")
        raise RuntimeError("after using the client")

    outcome = run_step(only, 7, {"region": "eu"})
    assert isinstance(outcome, Raised)
    # Set up once each, torn down in reverse order; the generator without try/finally does
    # not resume after an exception, exactly as in Ergate (contextlib semantics).
    assert events == ["settings up", "client up", "step eu:7 eu:7 eu", "client down"]


def test_step_with_none_return_and_end_hint_has_no_implicit_next() -> None:
    workflow = Workflow(unique_name="nonehint")

    @workflow.step(paths=[GoToEndPath()])
    def typed(x: int) -> None:
        return None

    @workflow.step(paths=[GoToEndPath()])
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    assert [type(p).__name__ for p in typed.paths] == ["GoToEndPath"]
    assert [type(p).__name__ for p in untyped.paths] == ["GoToEndPath", "NextStepPath"]


@pytest.mark.parametrize("mutation", ["append", "setitem"])
def test_step_mutating_its_input_does_not_change_the_job(mutation: str) -> None:
    workflow = Workflow(unique_name="mutate")

    @workflow.step
    def only(x: dict[str, list[int]]) -> str:
        if mutation == "append":
            x["items"].append(99)
        else:
            x["items"] = []
        raise ValueError("fail after mutating")

    job = Job(workflow_name="mutate", initial_input_value={"items": [1, 2]})
    after = _run(workflow, job)
    assert after.status is JobStatus.FAILED
    assert after.initial_input_value == {"items": [1, 2]}
