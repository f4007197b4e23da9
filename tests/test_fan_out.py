"""Fan-out and fan-in with real workers, on every setup: the join gets every child's outcome
in input order, a one-slot worker runs a whole fan-out (the waiting parent holds no slot),
`max_in_flight` holds children back across the worker's slots, cancelling the parent leaves no
unfinished child, and a worker SIGKILLed half-way through making 200 children leaves exactly
200 children and one join. The logic's cases run on the `WorkflowTester` in
tests/unit/test_fan_out.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ergate_celery import Job, JobStatus

from .apps import fan_out_app
from .faults import FAST_REDIS_REDELIVERY, step_counts, worker_process
from .support import SETUPS, Setup, in_process_worker, wait_until

pytestmark = pytest.mark.setup(*SETUPS, "django_db")

S = JobStatus
WAIT = 120


def _register(setup: Setup) -> None:
    for workflow in fan_out_app.WORKFLOWS:
        setup.ergate.register_workflow(workflow)


def _children(setup: Setup, job_id: str) -> list[Job]:
    return setup.ergate.list_jobs(parent=job_id, limit=1000).jobs


def test_a_one_slot_worker_runs_a_fan_out_and_the_join_sees_every_failure_in_order(
    setup: Setup,
) -> None:
    _register(setup)
    order = {"child": "fo_square", "count": 50}
    job = setup.ergate.submit_job("fo_parent", initial_input_value=order, tags={"run": "r1"})
    job_id = str(job.id)
    with in_process_worker(setup.app, concurrency=1):
        done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
    assert done.status is S.COMPLETED, done.error
    failing = [5, 22, 39]
    result = done.last_return_value
    assert result["ids"] == [f"{job_id}.{n}" for n in range(50)]
    assert result["values"] == [n * n for n in range(50) if n not in failing]
    assert result["errors"] == failing
    assert [n for n, s in enumerate(result["statuses"]) if s == "FAILED"] == failing
    children = _children(setup, job_id)
    assert len(children) == 50
    assert all(c.parent_id == job_id and c.tags == {"run": "r1"} for c in children)
    assert done.percent_completed == 100.0


def test_max_in_flight_holds_children_back_and_cancelling_the_parent_ends_them_all(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(setup)
    gate = tmp_path / "gate"
    monkeypatch.setenv("ERGATE_FAN_OUT_GATE", str(gate))
    bounded = {"child": "fo_gated", "count": 8, "max_in_flight": 3}
    cancelled = {"child": "fo_gated", "count": 6, "max_in_flight": 2}
    with in_process_worker(setup.app, concurrency=6):
        first = str(setup.ergate.submit_job("fo_parent", initial_input_value=bounded).id)

        def running(job_id: str, count: int) -> list[Job] | None:
            if setup.ergate.get_job(job_id).status is not S.SCHEDULED:
                return None  # still making its children
            children = _children(setup, job_id)
            started = [c for c in children if c.status is S.RUNNING]
            return children if len(started) == count else None

        children = wait_until(lambda: running(first, 3), WAIT, what="3 children run")
        held = [c for c in children if c.status is S.SCHEDULED]
        assert len(held) == 5
        assert all(c.wait and c.wait.turn_of == first for c in held)
        waiting = setup.ergate.get_job(first)
        assert waiting.status is S.SCHEDULED
        assert waiting.wait is not None
        assert waiting.wait.children == 8

        second = str(setup.ergate.submit_job("fo_parent", initial_input_value=cancelled).id)
        wait_until(lambda: running(second, 2), WAIT, what="2 children of the second run")
        assert setup.ergate.cancel_job(second).status is S.CANCELLING
        gate.touch()
        done = setup.ergate.wait_for_job(first, timeout=WAIT)
        gone = setup.ergate.wait_for_job(second, timeout=WAIT)
    assert done.status is S.COMPLETED, done.error
    assert done.last_return_value["values"] == list(range(8))
    assert fan_out_app.GATED.most[first] <= 3
    assert gone.status is S.CANCELLED
    statuses = [c.status for c in _children(setup, second)]
    assert all(status.is_final for status in statuses)
    assert statuses[2:] == [S.CANCELLED] * 4  # held back: cancelled without a run


@pytest.mark.slow
@pytest.mark.setup("redis")
def test_a_worker_killed_half_way_through_a_fan_out_makes_exactly_its_children_and_one_join(
    setup_name: str, make_setup: Callable[..., Setup], tmp_path: Path
) -> None:
    setup = make_setup(setup_name, broker_transport_options=FAST_REDIS_REDELIVERY)
    _register(setup)
    flag = tmp_path / "killed"
    order = {"child": "fo_square", "count": 200}
    job_id = str(setup.ergate.submit_job("fo_parent", initial_input_value=order).id)
    env = {"ERGATE_FAN_OUT_KILL_FLAG": str(flag)}
    with worker_process(setup, "fan", concurrency=2, env=env, module="tests.apps.fan_out_app"):
        done = setup.ergate.wait_for_job(job_id, timeout=WAIT)
    assert flag.exists(), "the worker killed itself half-way through making the children"
    assert done.status is S.COMPLETED, done.error
    assert len(done.last_return_value["ids"]) == 200
    children = _children(setup, job_id)
    assert [c.id for c in children] == [f"{job_id}.{n}" for n in range(200)]
    assert setup.ergate.list_jobs(parent=job_id).next_cursor is not None
    counts = step_counts(setup, job_id)
    assert counts["split"] == 2  # the run killed, and the run that made the rest
    assert counts["join"] == 1
    runs = sum(step_counts(setup, f"{job_id}.{n}")["compute"] for n in range(200))
    assert runs == 200
