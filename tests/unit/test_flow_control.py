"""Flow control without a server: concurrency slots per key (taken at a job's first claim,
freed however it ends, oldest waiting job first), `if_exists="return"`, a pause that parks
new submissions, the sweep's look at parked jobs, and periodic firing ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ergate_celery import (
    AbortJob,
    Concurrency,
    DuplicateJobError,
    InvalidDefinitionError,
    InvalidInputError,
    JobStatus,
    Sleep,
    Workflow,
    signals,
)
from ergate_celery.lifecycle.slots import Slots, free, take
from ergate_celery.model.concurrency import slot_name
from ergate_celery.operations.flow import describe_wait, waiting_for
from ergate_celery.operations.retrying import retry_job
from ergate_celery.scheduling.firing import firing_id, scheduled_time
from ergate_celery.scheduling.sweep import recover_stuck_jobs
from ergate_celery.testing import WorkflowTester

START = datetime(2030, 1, 1, tzinfo=UTC)


def _sync(limit: int = 1) -> Workflow:
    """Two steps with a sleep between: a job holds its slot while it waits."""
    workflow = Workflow(
        unique_name="sync",
        concurrency=Concurrency(limit, key=lambda job: job.user_context["tenant"]),
    )

    @workflow.step
    def fetch(value: Any) -> None:
        if value == "fail":
            raise RuntimeError("boom")
        if value == "abort":
            raise AbortJob("no")
        raise Sleep(seconds=60, retval=value)

    @workflow.step
    def store(value: Any) -> Any:
        return value

    return workflow


def _submit(tester: WorkflowTester, tenant: str, value: Any = 1, **options: Any) -> str:
    return str(
        tester.submit(
            "sync", initial_input_value=value, user_context={"tenant": tenant}, **options
        ).id
    )


def _status(tester: WorkflowTester, job_id: str) -> JobStatus:
    return tester.get_job(job_id).status


def test_one_job_per_key_in_progress_and_the_oldest_waiting_starts_next() -> None:
    tester = WorkflowTester(_sync(), now=START)
    a1, a2, b1, a3 = (_submit(tester, t) for t in ("acme", "acme", "bolt", "acme"))
    tester.run()

    # a1 and b1 started and sleep holding their slots; a2 and a3 wait, parked, in order.
    assert [_status(tester, j) for j in (a1, b1)] == [JobStatus.SCHEDULED] * 2
    for job_id, ahead in ((a2, 0), (a3, 1)):
        job = tester.get_job(job_id)
        assert (job.status, job.parked, job.waiting_for_slot) == (JobStatus.QUEUED, True, True)
        assert job.concurrency_key == "acme"
        assert tester.runtime.store.slots(slot_name("sync", "acme")).ahead_of(job_id) == ahead

    tester.advance(seconds=60)  # a1 ends: a2 starts (and sleeps); a3 still waits
    assert _status(tester, a1) is JobStatus.COMPLETED
    assert _status(tester, a2) is JobStatus.SCHEDULED
    assert tester.get_job(a3).waiting_for_slot
    tester.advance(seconds=120)
    assert {_status(tester, j) for j in (a1, a2, b1, a3)} == {JobStatus.COMPLETED}
    started = [job_id for job_id, step, _ in tester.steps_run if step == "fetch"]
    assert started == [a1, b1, a2, a3]
    assert tester.runtime.store.slots(slot_name("sync", "acme")).empty


def test_a_limit_of_two_runs_two_of_a_key_at_once() -> None:
    tester = WorkflowTester(_sync(limit=2), now=START)
    jobs = [_submit(tester, "acme") for _ in range(3)]
    tester.run()
    assert [_status(tester, j) for j in jobs] == [
        JobStatus.SCHEDULED,
        JobStatus.SCHEDULED,
        JobStatus.QUEUED,
    ]


@pytest.mark.parametrize("ending", ["fail", "abort", "cancel", "cancel_waiting", "deadline"])
def test_every_way_of_ending_frees_the_slot(ending: str) -> None:
    tester = WorkflowTester(_sync(), now=START)
    value = ending if ending in ("fail", "abort") else 1
    first = _submit(tester, "acme", value)
    options: dict[str, Any] = {}
    if ending == "deadline":
        options["deadline"] = START + timedelta(seconds=1)
    second = _submit(tester, "acme", **options)
    third = _submit(tester, "acme")
    tester.run()
    if ending == "cancel":
        tester.cancel(first)
    if ending == "cancel_waiting":
        tester.cancel(second)
        tester.cancel(first)
    if ending == "deadline":
        tester.advance(seconds=30)  # past second's deadline while it waits
        tester.cancel(first)
    tester.run()
    expected_first = {
        "fail": JobStatus.FAILED,
        "abort": JobStatus.ABORTED,
        "cancel": JobStatus.CANCELLED,
        "cancel_waiting": JobStatus.CANCELLED,
        "deadline": JobStatus.CANCELLED,
    }[ending]
    assert _status(tester, first) is expected_first
    if ending == "deadline":
        error = tester.get_job(second).error
        assert error is not None
        assert error.type == "DeadlineExpired"
    if ending == "cancel_waiting":
        assert _status(tester, second) is JobStatus.CANCELLED
    # The next job in line that can still run got the slot, and the one after it waits.
    runner, behind = (third, None) if ending in ("cancel_waiting", "deadline") else (second, third)
    assert _status(tester, runner) is JobStatus.SCHEDULED
    if behind is not None:
        assert tester.get_job(behind).waiting_for_slot
    tester.advance(seconds=200)
    assert _status(tester, third) is JobStatus.COMPLETED


def test_a_slot_left_behind_by_a_dead_process_is_freed_by_the_sweep() -> None:
    tester = WorkflowTester(_sync(), now=START, settings={"ergate_stuck_after": 60})
    store = tester.runtime.store
    # A job that ended in a process killed before it freed its slot: its record is gone.
    assert store.take_slot(slot_name("sync", "acme"), "ghost", START.isoformat(), 1)
    waiting = _submit(tester, "acme")
    tester.run()
    assert tester.get_job(waiting).waiting_for_slot

    assert recover_stuck_jobs(tester.runtime, START + timedelta(seconds=61)) == 1
    tester.run()
    assert _status(tester, waiting) is JobStatus.SCHEDULED
    assert store.slots(slot_name("sync", "acme")).holding == (waiting,)


def test_the_sweep_dates_a_job_that_still_waits_anew() -> None:
    tester = WorkflowTester(_sync(), now=START, settings={"ergate_stuck_after": 60})
    holder, waiting = _submit(tester, "acme"), _submit(tester, "acme")
    tester.run()
    later = START + timedelta(seconds=61)
    assert recover_stuck_jobs(tester.runtime, later) == 0
    job = tester.get_job(waiting)
    assert (job.waiting_for_slot, job.lost_runs, job.recoveries) == (True, 0, [])
    assert _status(tester, holder) is JobStatus.SCHEDULED


def test_parking_and_starting_are_announced() -> None:
    tester = WorkflowTester(_sync(), now=START)
    seen: list[tuple[str, bool]] = []

    def parked(sender: Any, job: Any, **kwargs: Any) -> None:
        seen.append(("parked", job.waiting_for_slot))

    def unparked(sender: Any, job: Any, **kwargs: Any) -> None:
        seen.append(("unparked", job.waiting_for_slot))

    signals.job_parked.connect(parked)
    signals.job_unparked.connect(unparked)
    try:
        _submit(tester, "acme")
        _submit(tester, "acme")
        tester.advance(seconds=60)
    finally:
        signals.job_parked.disconnect(parked)
        signals.job_unparked.disconnect(unparked)
    assert seen == [("parked", True), ("unparked", False)]


def test_list_jobs_filters_by_concurrency_key() -> None:
    tester = WorkflowTester(_sync(), now=START)
    acme = {_submit(tester, "acme"), _submit(tester, "acme")}
    _submit(tester, "bolt")
    page = tester.list_jobs(concurrency_key="acme")
    assert {str(job.id) for job in page.jobs} == acme


def test_a_key_that_cannot_be_computed_refuses_the_submission() -> None:
    tester = WorkflowTester(_sync(), now=START)
    with pytest.raises(InvalidInputError, match="concurrency key"):
        tester.submit("sync", initial_input_value=1, user_context={})
    assert tester.list_jobs().jobs == []
    with pytest.raises(InvalidDefinitionError, match="limit"):
        Concurrency(0)


def test_without_a_key_every_job_of_the_workflow_shares_one() -> None:
    workflow = Workflow(unique_name="single", concurrency=Concurrency(1))

    @workflow.step
    def wait(value: int) -> None:
        raise Sleep(seconds=10, retval=value)

    @workflow.step
    def done(value: int) -> int:
        return value

    tester = WorkflowTester(workflow, now=START)
    first = tester.submit("single", initial_input_value=1)
    second = tester.submit("single", initial_input_value=2)
    tester.run()
    assert tester.get_job(second.id).waiting_for_slot
    tester.advance(seconds=30)
    assert {tester.get_job(j.id).status for j in (first, second)} == {JobStatus.COMPLETED}


def test_a_taken_id_returns_the_stored_job_with_if_exists_return() -> None:
    tester = WorkflowTester(_sync(), now=START)
    first = tester.submit("sync", initial_input_value=1, user_context={"tenant": "a"}, id="x-1")
    again = tester.submit(
        "sync", initial_input_value=2, user_context={"tenant": "a"}, id="x-1", if_exists="return"
    )
    assert again.id == first.id
    assert again.initial_input_value == 1
    with pytest.raises(DuplicateJobError, match='if_exists="return"'):
        tester.submit("sync", initial_input_value=1, user_context={"tenant": "a"}, id="x-1")
    with pytest.raises(InvalidInputError, match="if_exists"):
        tester.submit("sync", user_context={"tenant": "a"}, id="x-2", if_exists="ignore")
    tester.run()
    assert [step for job_id, step, _ in tester.steps_run] == ["fetch"]


def test_a_job_submitted_while_paused_is_parked_in_its_write_and_the_sweep_finds_it() -> None:
    tester = WorkflowTester(_sync(), now=START, settings={"ergate_stuck_after": 60})
    store = tester.runtime.store
    store.set_paused("sync", True)
    parked: list[str] = []

    def on_parked(sender: Any, job: Any, **kwargs: Any) -> None:
        parked.append(str(job.id))

    signals.job_parked.connect(on_parked)
    try:
        job_id = _submit(tester, "acme")
    finally:
        signals.job_parked.disconnect(on_parked)
    assert parked == [job_id]
    job = tester.get_job(job_id)
    assert (job.status, job.parked, job.waiting_for_slot) == (JobStatus.QUEUED, True, False)
    assert tester.run() == 0

    later = START + timedelta(seconds=61)
    assert recover_stuck_jobs(tester.runtime, later) == 0  # still paused: dated anew
    assert tester.get_job(job_id).parked

    # A resume whose caller died after removing the pause: the sweep publishes the job.
    store.set_paused("sync", False)
    assert recover_stuck_jobs(tester.runtime, later + timedelta(seconds=61)) == 1
    tester.run()
    assert _status(tester, job_id) is JobStatus.SCHEDULED


def test_slots_are_taken_once_and_freed_to_the_oldest() -> None:
    slots, holds = take(Slots(), "a", "2030-01-01T00:00:02", 1)
    assert holds
    assert slots is not None
    again, holds = take(slots, "a", "2030-01-01T00:00:02", 1)
    assert (again, holds) == (None, True)
    slots, holds = take(slots, "c", "2030-01-01T00:00:03", 1)
    assert not holds
    assert slots is not None
    slots, holds = take(slots, "b", "2030-01-01T00:00:01", 1)
    assert not holds
    assert slots is not None
    assert take(slots, "b", "2030-01-01T00:00:01", 1) == (None, False)
    assert [slots.ahead_of(j) for j in "abc"] == [None, 0, 1]
    assert Slots.decode(slots.encode()) == slots

    freed, promoted = free(slots, "a")
    assert promoted == ["b"]
    assert freed is not None
    assert freed.holding == ("b",)
    assert free(freed, "nobody") == (None, [])


@pytest.mark.parametrize(
    ("fired_at", "every", "expected"),
    [
        ("2030-01-01T10:00:03.900+00:00", 2.0, "2030-01-01T10:00:02+00:00"),
        ("2030-01-01T10:00:02.100+00:00", 2.0, "2030-01-01T10:00:02+00:00"),
        ("2030-01-01T10:07:41+00:00", None, "2030-01-01T10:07:00+00:00"),
    ],
)
def test_a_firing_is_named_by_its_entry_and_scheduled_time(
    fired_at: str, every: float | None, expected: str
) -> None:
    assert scheduled_time(fired_at, every).isoformat() == expected
    assert firing_id("nightly report", fired_at, every) == f"nightly_report@{expected}"
    assert len(firing_id("x" * 300, fired_at, every)) == 100


def test_a_parked_job_says_why_it_waits_and_how_many_are_ahead() -> None:
    tester = WorkflowTester(_sync(), now=START)
    store = tester.runtime.store
    running = _submit(tester, "acme")
    first, second = _submit(tester, "acme"), _submit(tester, "acme")
    tester.run()
    assert waiting_for(store, tester.get_job(running)) is None
    assert waiting_for(store, tester.get_job(second)) == {
        "reason": "concurrency",
        "key": "acme",
        "ahead": 1,
        "limit": 1,
    }
    assert describe_wait(waiting_for(store, tester.get_job(first))) == (
        "waits for a concurrency slot of key 'acme' (1 in progress, 0 jobs ahead)"
    )
    store.set_paused("sync", True)
    paused = _submit(tester, "bolt")
    assert waiting_for(store, tester.get_job(paused)) == {"reason": "paused"}


def test_a_slot_handed_to_a_job_that_ended_while_waiting_goes_to_the_next() -> None:
    tester = WorkflowTester(_sync(), now=START)
    running, ended, next_one = (_submit(tester, "acme") for _ in range(3))
    tester.run()
    # `ended` is cancelled by a process that died before it freed its place in line.
    tester.runtime.store.update(
        ended, lambda job: job.model_copy(update={"status": JobStatus.CANCELLED})
    )
    tester.cancel(running)
    tester.run()
    assert _status(tester, next_one) is JobStatus.SCHEDULED
    assert tester.runtime.store.slots(slot_name("sync", "acme")).holding == (next_one,)


def test_a_retried_job_takes_a_slot_again() -> None:
    tester = WorkflowTester(_sync(), now=START)
    failed = _submit(tester, "acme", "fail")
    holder = _submit(tester, "acme")
    tester.run()
    assert _status(tester, failed) is JobStatus.FAILED
    assert _status(tester, holder) is JobStatus.SCHEDULED  # it took the freed slot
    retry_job(tester.runtime, failed)
    tester.run()
    assert tester.get_job(failed).waiting_for_slot  # behind the job that holds the slot
    tester.advance(seconds=60)
    assert _status(tester, holder) is JobStatus.COMPLETED
    assert _status(tester, failed) is JobStatus.FAILED
    assert [s for j, s, _ in tester.steps_run if j == failed] == ["fetch", "fetch"]
