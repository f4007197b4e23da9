"""Flow control where a cancel meets a slot, on a real worker: a job cancelled at the instant
its worker puts it in line for a slot leaves no place behind, and a cancel inside a Django
`atomic()` block starts the job that takes the freed slot only when the block commits (a
rollback changes nothing)."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ergate_celery import Concurrency, JobStatus, Sleep, Workflow
from ergate_celery.model.concurrency import slot_name
from ergate_celery.model.job import Job
from ergate_celery.worker import step_body

from .support import Setup, wait_until

WAIT = 60
FLOW_SETUPS = ("redis", "rabbitmq_postgres", "django_db")


def _gated(name: str) -> tuple[Workflow, threading.Event]:
    """A workflow of one job at a time whose step waits for `release` (a job whose input is
    "hold"), or sleeps an hour, holding its slot ("sleep"), or returns at once."""
    release = threading.Event()
    workflow = Workflow(unique_name=name, concurrency=Concurrency(1))

    @workflow.step
    def work(how: str) -> str:
        if how == "hold":
            assert release.wait(WAIT)
        if how == "sleep":
            raise Sleep(seconds=3600, retval=how)
        return how

    @workflow.step
    def done(how: str) -> str:
        return how

    return workflow, release


def _status(setup: Setup, job_id: str) -> JobStatus:
    return setup.ergate.get_job(job_id).status


@pytest.mark.setup(*FLOW_SETUPS)
def test_a_job_cancelled_as_its_worker_puts_it_in_line_keeps_no_place(
    setup: Setup, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflow, release = _gated("flow_cancel_race")
    setup.ergate.register_workflow(workflow)
    store = setup.ergate.runtime.store
    name = slot_name("flow_cancel_race", "*")
    # The ordering hook: the cancel runs in the worker, just before its take of a slot for
    # `early` (the cancel finds nothing to free; the take then puts the job in line) and
    # before its second take for `late` (parked, then cancelled; the take puts it back).
    cancel_before: dict[str, int] = {}
    takes: Counter[str] = Counter()
    take_slot = store.take_slot

    def take_after_cancel(slots: str, job_id: str, submitted_at: str, limit: int) -> bool:
        takes[job_id] += 1
        if cancel_before.get(job_id) == takes[job_id]:
            assert setup.ergate.cancel_job(job_id).status is JobStatus.CANCELLED
        return take_slot(slots, job_id, submitted_at, limit)

    monkeypatch.setattr(store, "take_slot", take_after_cancel)
    done: list[str] = []
    admitted = step_body.admitted

    def noted(rt: Any, step: Any, message: Job) -> bool:
        try:
            return admitted(rt, step, message)
        finally:
            done.append(str(message.id))

    monkeypatch.setattr(step_body, "admitted", noted)
    with worker():
        holder = str(setup.ergate.submit_job("flow_cancel_race", initial_input_value="hold").id)
        wait_until(lambda: _status(setup, holder) is JobStatus.RUNNING, WAIT)
        early, late = "race-early", "race-late"
        cancel_before.update({early: 1, late: 2})
        for job_id in (early, late):
            setup.ergate.submit_job("flow_cancel_race", initial_input_value="now", id=job_id)
        wait_until(lambda: {early, late} <= set(done), WAIT, what="both messages handled")
        # The holder still runs: only a job of its own would free the places of these two.
        slots = store.slots(name)
        assert (slots.holding, slots.waiting) == ((holder,), ())
        after = str(setup.ergate.submit_job("flow_cancel_race", initial_input_value="now").id)
        release.set()
        wait_until(lambda: _status(setup, after) is JobStatus.COMPLETED, WAIT)
    assert [_status(setup, j) for j in (holder, early, late)] == [
        JobStatus.COMPLETED,
        JobStatus.CANCELLED,
        JobStatus.CANCELLED,
    ]
    assert takes[late] == 2  # it was parked, then taken again
    assert store.slots(name).empty


class _RollbackError(Exception):
    pass


@pytest.mark.setup(*FLOW_SETUPS)
def test_a_cancel_inside_atomic_starts_the_next_job_on_commit_and_a_rollback_changes_nothing(
    django_db: Path, setup: Setup, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import transaction

    workflow, _ = _gated("flow_cancel_atomic")
    setup.ergate.register_workflow(workflow)
    runtime = setup.ergate.runtime
    name = slot_name("flow_cancel_atomic", "*")
    published: list[str] = []
    publish = runtime.publish

    def noted(job: Job) -> None:
        published.append(str(job.id))
        publish(job)

    monkeypatch.setattr(runtime, "publish", noted)
    with worker():
        # `sleeping` holds the slot (SCHEDULED, sleeping); `next_job` waits for it, parked.
        sleeping = str(
            setup.ergate.submit_job("flow_cancel_atomic", initial_input_value="sleep").id
        )
        wait_until(lambda: _status(setup, sleeping) is JobStatus.SCHEDULED, WAIT)
        next_job = str(setup.ergate.submit_job("flow_cancel_atomic", initial_input_value="now").id)
        wait_until(lambda: setup.ergate.get_job(next_job).waiting_for_slot, WAIT)
        published.clear()

        def cancel_then_roll_back() -> None:
            with transaction.atomic():
                assert setup.ergate.cancel_job(sleeping).status is JobStatus.CANCELLED
                assert published == []
                raise _RollbackError

        with pytest.raises(_RollbackError):
            cancel_then_roll_back()
        assert _status(setup, sleeping) is JobStatus.SCHEDULED
        assert setup.ergate.get_job(next_job).waiting_for_slot
        assert published == []
        slots = runtime.store.slots(name)
        assert (slots.holding, [j for _, j in slots.waiting]) == ((sleeping,), [next_job])

        with transaction.atomic():
            assert setup.ergate.cancel_job(sleeping).status is JobStatus.CANCELLED
            assert published == []  # the worker could not read the freed slot yet
        assert set(published) == {next_job}  # (its next step may be published already)
        wait_until(lambda: _status(setup, next_job) is JobStatus.COMPLETED, WAIT)
    assert _status(setup, sleeping) is JobStatus.CANCELLED
    assert runtime.store.slots(name).empty
