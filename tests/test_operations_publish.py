"""Operations that write a job's change, then publish its step — retry, signal, beat's release —
on real workers: a reply lost between the two is recognised in the same call, a caller killed
between the two is finished by asking again, and inside a Django transaction
the change and its message wait for the commit, on every store, so a worker reads the
committed job and a rolled-back view changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult

from ergate_celery import JobStatus, WaitForSignal, Workflow
from ergate_celery.lifecycle.events import RetryRequested, Signalled
from ergate_celery.operations import queueing
from ergate_celery.operations.retrying import retry_job
from ergate_celery.operations.signalling import signal_job
from ergate_celery.scheduling.release import release_due_jobs
from ergate_celery.worker.runtime import Runtime
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

from .support import LostReplies, Setup, in_process_worker, wait_until
from .workflows import echo_workflow

WAIT = 60
#: A job stuck without its message waits forever; no test needs this long when all is well.
STUCK = 20
pytestmark = pytest.mark.setup("redis", "rabbitmq_postgres", "django_db")


def _workflows(setup: Setup, broken: set[str]) -> None:
    orders = Workflow(unique_name="orders")

    @orders.step
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        if order["id"] in broken:
            raise ConnectionError("payment provider down")
        return {**order, "charged": True}

    approvals = Workflow(unique_name="approvals")

    @approvals.step
    def ask(order: dict[str, Any]) -> dict[str, Any]:
        raise WaitForSignal("approved", retval=order)

    @approvals.step
    def ship(order: dict[str, Any]) -> dict[str, Any]:
        return {**order, "shipped": True}

    setup.ergate.register_workflow(orders)
    setup.ergate.register_workflow(approvals)


def _losing_first_reply(setup: Setup) -> Runtime:
    """The binding's runtime, but the reply of its first store write is lost (after the
    write went through)."""
    rt = setup.ergate.runtime
    return Runtime(
        LostReplies(rt.store, {1}),  # type: ignore[arg-type]
        rt.settings,
        rt.announce,
        rt.publish,
        rt.paused,
    )


def _waiting(setup: Setup) -> str:
    job_id = str(setup.ergate.submit_job("approvals", initial_input_value={"id": "w"}).id)
    wait_until(lambda: setup.ergate.get_job(job_id).wait, timeout=WAIT, what="the wait")
    return job_id


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A repeat waits 0.5 s, not 5, for a first caller that may still be alive."""
    monkeypatch.setattr(queueing, "FIRST_CALLER_GRACE", 0.5)


def test_a_lost_reply_or_a_killed_caller_leaves_no_job_without_its_message(
    setup: Setup, short_grace: None
) -> None:
    broken = {"lost", "killed"}
    _workflows(setup, broken)
    start = datetime.now(UTC) + timedelta(hours=1)
    later = setup.ergate.submit_job(
        "orders", initial_input_value={"id": "later"}, requested_start_time=start
    )
    with in_process_worker(setup.app):
        failed = [
            str(setup.ergate.submit_job("orders", initial_input_value={"id": i}).id)
            for i in ("lost", "killed")
        ]
        for job_id in failed:
            assert setup.ergate.wait_for_job(job_id, timeout=WAIT).status is JobStatus.FAILED
        broken.clear()
        waiting = [_waiting(setup), _waiting(setup)]
        # The reply of the write is lost: the same call recognises its write and publishes.
        assert retry_job(_losing_first_reply(setup), failed[0]).status is JobStatus.QUEUED
        signal_job(_losing_first_reply(setup), waiting[0], "approved", {"by": "ana"})
        assert release_due_jobs(_losing_first_reply(setup), start + timedelta(seconds=1)) == 1
        # A caller killed between its write and its publish: asked again, it finishes.
        rt = setup.ergate.runtime
        rt.apply(failed[1], RetryRequested("killed"), sender="a killed caller")
        assert setup.ergate.retry_job(failed[1]).status is JobStatus.QUEUED
        rt.apply(waiting[1], Signalled("approved", {"by": "bob"}, "k"), sender="a killed caller")
        setup.ergate.signal_job(waiting[1], "approved", {"by": "bob"})
        done = [
            setup.ergate.wait_for_job(job_id, timeout=STUCK)
            for job_id in (*failed, *waiting, str(later.id))
        ]
    assert [job.status for job in done] == [JobStatus.COMPLETED] * 5
    assert [job.retries for job in done[:2]] == [1, 1]
    assert done[3].last_return_value == {"id": "w", "shipped": True}


def _in_transaction(action: Callable[[], Any], *, commit: bool) -> None:
    from django.db import transaction

    class RolledBackError(Exception):
        pass

    try:
        with transaction.atomic():
            action()
            if not commit:
                raise RolledBackError
    except RolledBackError:
        pass


def test_in_a_django_transaction_retry_signal_and_resume_wait_for_the_commit(
    setup_name: str, make_setup: Callable[..., Setup], django_db: Path
) -> None:
    setup = make_setup(setup_name, ergate_pause_refresh=0.2)
    broken = {"o-2"}
    _workflows(setup, broken)
    setup.ergate.register_workflow(echo_workflow("held", "only"))
    setup.ergate.pause_workflow("held")
    with in_process_worker(setup.app):
        failed = str(setup.ergate.submit_job("orders", initial_input_value={"id": "o-2"}).id)
        held = str(setup.ergate.submit_job("held", initial_input_value=1).id)
        assert setup.ergate.wait_for_job(failed, timeout=WAIT).status is JobStatus.FAILED
        # The step result is stored after the job's record: on SQLite a write still under way
        # would make the transactions below fail to take their lock. The held job was stored
        # parked by its submit (its workflow paused): it has no message, so no step result.
        step = AsyncResult(f"{STEP_TASK_ID_PREFIX}{failed}:0", app=setup.app)
        wait_until(lambda: step.state == "FAILURE", timeout=WAIT, what=f"{failed} FAILURE")
        assert setup.ergate.get_job(held).parked
        broken.clear()
        waiting = _waiting(setup)
        # One at a time, each job ended before the next transaction: on SQLite a worker's
        # write under way would make a transaction fail to take its lock.
        done, rolled_back = [], []
        for job_id, change in (
            (failed, lambda value: setup.ergate.retry_job(failed)),
            (waiting, lambda value: setup.ergate.signal_job(waiting, "approved", value)),
            (held, lambda value: setup.ergate.resume_workflow("held")),
        ):
            if job_id != held:
                _in_transaction(lambda change=change: change("eve"), commit=False)
                rolled_back.append(setup.ergate.get_job(job_id))
            _in_transaction(lambda change=change: change("ana"), commit=True)
            done.append(setup.ergate.wait_for_job(job_id, timeout=STUCK))
    assert [(job.status, job.retries, job.signals) for job in rolled_back] == [
        (JobStatus.FAILED, 0, {}),
        (JobStatus.SCHEDULED, 0, {}),
    ]
    assert [job.status for job in done] == [JobStatus.COMPLETED] * 3
    assert (done[0].retries, done[1].signals) == (1, {"approved": "ana"})
