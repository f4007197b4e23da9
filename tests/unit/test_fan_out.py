"""Fan-out and fan-in on the `WorkflowTester`: children made once, the join run once with
every child's outcome in input order, `max_in_flight`, cancelling, retrying the join, and a
lost notice of a child's end (the same code runs on workers: tests/test_fan_out.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import pytest

from ergate_celery import (
    ChildResult,
    Context,
    FanOut,
    FanOutPath,
    InvalidInputError,
    JobStatus,
    WaitForSignal,
    Workflow,
)
from ergate_celery.model.graph import mermaid
from ergate_celery.operations.retrying import retry_job
from ergate_celery.scheduling.sweep import recover_stuck_jobs
from ergate_celery.testing import WorkflowTester
from ergate_celery.worker import fan_out

S = JobStatus
NOW = datetime(2030, 1, 1, tzinfo=UTC)

square = Workflow(unique_name="fo_square")


@square.step
def compute(x: int) -> int:
    if x % 17 == 5:
        raise ValueError(f"no square for input #{x}")
    return x * x


gated = Workflow(unique_name="fo_gated")


@gated.step
def wait_for_go(x: int) -> int:
    raise WaitForSignal("go", retval=x)


@gated.step
def finish(x: int) -> int:
    return x


def _parent(
    name: str, child: str, *, max_in_flight: int | None = None, fail_join: list[bool] | None = None
) -> Workflow:
    wf = Workflow(unique_name=name)

    @wf.step(paths=[FanOutPath("join")])
    def split(count: int) -> None:
        raise FanOut(child, inputs=list(range(count)), then=join, max_in_flight=max_in_flight)

    @wf.step
    def join(results: list[ChildResult]) -> dict[str, Any]:
        if fail_join and fail_join.pop():
            raise RuntimeError("the join failed once")
        return {
            "values": [r.value for r in results if r.ok],
            "errors": [r.job_id.rsplit(".", 1)[1] for r in results if r.error is not None],
            "statuses": sorted({r.status.name for r in results}),
        }

    return wf


def _tester(*workflows: Workflow) -> WorkflowTester:
    return WorkflowTester(square, gated, *workflows, now=NOW)


def test_the_join_gets_every_value_and_every_error_in_input_order() -> None:
    t = _tester(_parent("fo_fifty", "fo_square"))
    job = t.submit("fo_fifty", initial_input_value=50, tags={"batch": "b1"}, user_context={"u": 1})
    t.run()
    done = t.get_job(job.id)
    assert done.status is S.COMPLETED
    failing = [x for x in range(50) if x % 17 == 5]
    assert len(failing) == 3
    assert done.last_return_value == {
        "values": [x * x for x in range(50) if x not in failing],
        "errors": [str(x) for x in failing],
        "statuses": ["COMPLETED", "FAILED"],
    }
    children = t.list_jobs(parent=str(job.id), limit=100).jobs
    assert [c.id for c in children] == [f"{job.id}.{n}" for n in range(50)]
    assert {c.parent_id for c in children} == {job.id}
    assert all(c.tags == {"batch": "b1"} and c.user_context == {"u": 1} for c in children)
    # Each child ran once, the join once.
    assert sum(1 for _, step, _ in t.steps_run if step == "compute") == 50
    assert sum(1 for _, step, _ in t.steps_run if step == "join") == 1


def test_the_parent_waits_scheduled_for_its_children_and_its_progress_follows_them() -> None:
    t = _tester(_parent("fo_wait", "fo_gated"))
    job = t.submit("fo_wait", initial_input_value=4)
    t.run()
    waiting = t.get_job(job.id)
    assert waiting.status is S.SCHEDULED
    assert waiting.wait is not None
    assert waiting.wait.children == 4
    assert "4 children" in waiting.wait.describe()
    assert waiting.percent_completed == 0.0
    t.signal(f"{job.id}.0", "go")
    t.signal(f"{job.id}.1", "go")
    t.run()
    assert t.get_job(job.id).percent_completed == 25.0  # half of the fan-out step's 50 %
    t.signal(f"{job.id}.2", "go")
    t.signal(f"{job.id}.3", "go")
    t.run()
    done = t.get_job(job.id)
    assert done.status is S.COMPLETED
    assert done.last_return_value["values"] == [0, 1, 2, 3]


def test_max_in_flight_holds_the_others_back_until_earlier_ones_end() -> None:
    t = _tester(_parent("fo_bounded", "fo_gated", max_in_flight=3))
    job = t.submit("fo_bounded", initial_input_value=6)
    t.run()

    def children() -> list[Any]:
        return t.list_jobs(parent=str(job.id)).jobs

    def started() -> list[int]:
        return [n for n, c in enumerate(children()) if c.wait is None or c.wait.turn_of is None]

    assert started() == [0, 1, 2]
    held = children()[4]
    assert held.status is S.SCHEDULED
    assert held.wait is not None
    assert "its turn" in held.wait.describe()
    t.signal(f"{job.id}.1", "go")
    t.run()
    assert started() == [0, 1, 2, 3]
    unfinished = [c for c in children() if not c.is_final and c.wait and c.wait.turn_of is None]
    assert len(unfinished) == 3
    for n in (0, 2, 3, 4, 5):
        t.signal(f"{job.id}.{n}", "go")
        t.run()
    assert t.get_job(job.id).status is S.COMPLETED


def test_a_refused_input_fails_the_fan_out_step_naming_its_position_and_makes_no_child() -> None:
    wf = Workflow(unique_name="fo_refused")

    @wf.step(paths=[FanOutPath("join")])
    def split(_: Any) -> None:
        raise FanOut("fo_square", inputs=[1, 2, "three", 4], then=join)

    @wf.step
    def join(results: list[ChildResult]) -> int:
        return len(results)

    t = _tester(wf)
    job = t.submit("fo_refused")
    t.run()
    failed = t.get_job(job.id)
    assert failed.status is S.FAILED
    assert failed.error is not None
    assert failed.error.type == "InvalidInputError"
    assert "Child 2 of the fan-out" in failed.error.message
    assert "three" not in failed.error.message  # no input value in an error
    assert t.list_jobs(parent=str(job.id)).jobs == []


def test_cancelling_the_parent_cancels_its_unfinished_children() -> None:
    t = _tester(_parent("fo_cancel", "fo_gated", max_in_flight=2))
    job = t.submit("fo_cancel", initial_input_value=5)
    t.run()
    t.signal(f"{job.id}.0", "go")
    t.run()
    cancelled = t.cancel(str(job.id))
    assert cancelled.status is S.CANCELLED
    children = t.list_jobs(parent=str(job.id)).jobs
    assert all(c.is_final for c in children)
    assert [c.status for c in children] == [S.COMPLETED] + [S.CANCELLED] * 4
    t.run()
    assert not any(step == "join" for _, step, _ in t.steps_run)


def test_retrying_a_parent_whose_join_failed_runs_the_join_on_the_same_results() -> None:
    t = _tester(_parent("fo_retry", "fo_square", fail_join=[False, True]))
    job = t.submit("fo_retry", initial_input_value=8)
    t.run()
    assert t.get_job(job.id).status is S.FAILED
    retry_job(t.runtime, str(job.id))
    t.run()
    done = t.get_job(job.id)
    assert done.status is S.COMPLETED
    assert done.last_return_value["values"] == [x * x for x in range(8) if x != 5]
    assert sum(1 for _, step, _ in t.steps_run if step == "compute") == 8


def test_a_fan_out_cut_short_makes_the_rest_when_run_again_never_a_second_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = WorkflowTester(
        square, _parent("fo_cut", "fo_square"), now=NOW, settings={"ergate_stuck_after": 60}
    )
    store = t.runtime.store
    create = store.create
    made: list[str] = []

    def dies_at_the_thirtieth(job: Any, **options: Any) -> Any:
        if len(made) == 30:
            made.append("died")
            raise SystemError("the worker died")
        stored = create(job, **options)
        made.append(str(job.id))
        return stored

    monkeypatch.setattr(store, "create", dies_at_the_thirtieth)
    job = t.submit("fo_cut", initial_input_value=40)
    t.run()
    assert t.get_job(job.id).status is S.RUNNING
    t.advance(seconds=120)
    # The sweep requeues the fan-out step (and the children made but not yet sent).
    assert recover_stuck_jobs(t.runtime, t.now) >= 1
    assert t.get_job(job.id).status is S.QUEUED
    t.run()
    done = t.get_job(job.id)
    assert done.status is S.COMPLETED
    assert len(t.list_jobs(parent=str(job.id), limit=100).jobs) == 40
    assert sum(1 for _, step, _ in t.steps_run if step == "compute") == 40
    assert sum(1 for _, step, _ in t.steps_run if step == "join") == 1


def test_a_lost_notice_of_a_childs_end_is_found_by_the_next_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = WorkflowTester(
        square, _parent("fo_lost", "fo_square"), now=NOW, settings={"ergate_stuck_after": 60}
    )
    counted = fan_out.child_ended
    lost: list[str] = []

    def loses_one(rt: Any, child: Any, sender: str) -> None:
        if not lost:
            lost.append(str(child.id))
            return
        counted(rt, child, sender)

    monkeypatch.setattr(fan_out, "child_ended", loses_one)
    job = t.submit("fo_lost", initial_input_value=3)
    t.run()
    assert t.get_job(job.id).status is S.SCHEDULED
    t.advance(seconds=61)  # beat's release counts the children again
    done = t.get_job(job.id)
    assert done.status is S.COMPLETED, done
    assert done.last_return_value["values"] == [0, 1, 4]


def test_no_input_goes_on_to_the_join_at_once_and_a_second_fan_out_numbers_on() -> None:
    wf = Workflow(unique_name="fo_twice")

    @wf.step(paths=[FanOutPath("middle")])
    def first(count: int) -> None:
        raise FanOut("fo_square", inputs=list(range(count)), then=middle)

    @wf.step(paths=[FanOutPath("last")])
    def middle(results: list[ChildResult]) -> None:
        raise FanOut(square, inputs=[], then="last")

    @wf.step
    def last(results: list[ChildResult]) -> int:
        return len(results)

    t = _tester(wf)
    job = t.submit("fo_twice", initial_input_value=2)
    t.run()
    done = t.get_job(job.id)
    assert done.status is S.COMPLETED
    assert done.last_return_value == 0
    assert done.fan_out is not None
    assert done.fan_out.first == 2
    assert done.percent_completed == 100.0


def test_children_get_the_given_user_context_and_the_join_can_read_the_parents() -> None:
    wf = Workflow(unique_name="fo_context")

    @wf.step(paths=[FanOutPath("join")])
    def split(_: Any) -> None:
        raise FanOut("fo_square", inputs=[1], then=join, user_context={"child": True})

    @wf.step
    def join(results: list[ChildResult], context: Annotated[Any, Context()]) -> Any:
        return context

    t = _tester(wf)
    job = t.submit("fo_context", user_context={"parent": True})
    t.run()
    assert t.get_job(job.id).last_return_value == {"parent": True}
    assert t.get_job(f"{job.id}.0").user_context == {"child": True}


def test_fan_out_refuses_bad_arguments_and_the_graph_draws_it() -> None:
    with pytest.raises(InvalidInputError, match="one input per child"):
        FanOut("fo_square", inputs="abc", then="join")
    for bad in (0, -1, True, 2.5):
        with pytest.raises(InvalidInputError, match="max_in_flight"):
            FanOut("fo_square", inputs=[], then="join", max_in_flight=bad)
    wf = _parent("fo_drawn", "fo_square")
    wf.validate()
    drawn = mermaid(wf)
    assert 's0[["split"]]' in drawn
    assert 's0 -.->|"FanOut"| s1' in drawn


def test_a_join_that_is_not_after_the_fan_out_fails_the_step() -> None:
    wf = Workflow(unique_name="fo_backwards")

    @wf.step
    def start(_: Any) -> int:
        return 1

    @wf.step
    def split(_: Any) -> None:
        raise FanOut("fo_square", inputs=[1], then=start)

    t = _tester(wf)
    job = t.submit("fo_backwards")
    t.run()
    failed = t.get_job(job.id)
    assert failed.status is S.FAILED
    assert failed.error is not None
    assert failed.error.type == "ReverseGoToError"
    assert t.list_jobs(parent=str(job.id)).jobs == []
