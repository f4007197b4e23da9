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


def test_a_retry_whose_reply_was_lost_or_whose_caller_died_runs_the_job(
    setup: Setup, short_grace: None
) -> None:
    broken = {"lost", "killed"}
    _workflows(setup, broken)
    with in_process_worker(setup.app):
        lost, killed = (
            str(setup.ergate.submit_job("orders", initial_input_value={"id": i}).id)
            for i in ("lost", "killed")
        )
        for job_id in (lost, killed):
            assert setup.ergate.wait_for_job(job_id, timeout=WAIT).status is JobStatus.FAILED
        broken.clear()
        # The reply of the write is lost: the same call recognises its write and publishes.
        assert retry_job(_losing_first_reply(setup), lost).status is JobStatus.QUEUED
        # A caller killed between its write and its publish; asked again, the retry finishes.
        setup.ergate.runtime.apply(killed, RetryRequested("killed"), sender="killed caller")
        assert setup.ergate.retry_job(killed).status is JobStatus.QUEUED
        done = [setup.ergate.wait_for_job(job_id, timeout=STUCK) for job_id in (lost, killed)]
    assert [(job.status, job.retries) for job in done] == [(JobStatus.COMPLETED, 1)] * 2


def test_a_signal_whose_reply_was_lost_or_whose_caller_died_runs_the_job(
    setup: Setup, short_grace: None
) -> None:
    _workflows(setup, set())
    with in_process_worker(setup.app):
        lost, killed = _waiting(setup), _waiting(setup)
        signal_job(_losing_first_reply(setup), lost, "approved", {"by": "ana"})
        setup.ergate.runtime.apply(killed, Signalled("approved", {"by": "ana"}, "k"), sender="k")
        setup.ergate.signal_job(killed, "approved", {"by": "ana"})
        done = [setup.ergate.wait_for_job(job_id, timeout=STUCK) for job_id in (lost, killed)]
    assert [job.status for job in done] == [JobStatus.COMPLETED] * 2
    assert done[0].last_return_value == {"id": "w", "shipped": True}


def test_a_release_whose_reply_was_lost_runs_the_job(setup: Setup) -> None:
    _workflows(setup, set())
    start = datetime.now(UTC) + timedelta(hours=1)
    job = setup.ergate.submit_job(
        "orders", initial_input_value={"id": "s"}, requested_start_time=start
    )
    with in_process_worker(setup.app):
        assert release_due_jobs(_losing_first_reply(setup), start + timedelta(seconds=1)) == 1
        done = setup.ergate.wait_for_job(str(job.id), timeout=STUCK)
    assert done.status is JobStatus.COMPLETED


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


def test_a_retry_in_a_django_transaction_runs_once_it_commits(
    setup: Setup, django_db: Path
) -> None:
    broken = {"o-2"}
    _workflows(setup, broken)
    with in_process_worker(setup.app):
        job_id = str(setup.ergate.submit_job("orders", initial_input_value={"id": "o-2"}).id)
        assert setup.ergate.wait_for_job(job_id, timeout=WAIT).status is JobStatus.FAILED
        # Celery stores the step's failure after the job's: on SQLite a write still under
        # way would make the transaction below fail to take its lock.
        step = AsyncResult(f"{STEP_TASK_ID_PREFIX}{job_id}:0", app=setup.app)
        wait_until(lambda: step.state == "FAILURE", timeout=WAIT, what="the step's failure")
        broken.clear()
        _in_transaction(lambda: setup.ergate.retry_job(job_id), commit=False)
        assert setup.ergate.get_job(job_id).status is JobStatus.FAILED  # rolled back
        _in_transaction(lambda: setup.ergate.retry_job(job_id), commit=True)
        done = setup.ergate.wait_for_job(job_id, timeout=STUCK)
    assert done.status is JobStatus.COMPLETED
    assert done.retries == 1


def test_a_signal_in_a_rolled_back_transaction_releases_nothing(
    setup: Setup, django_db: Path
) -> None:
    _workflows(setup, set())
    with in_process_worker(setup.app):
        job_id = _waiting(setup)
        _in_transaction(
            lambda: setup.ergate.signal_job(job_id, "approved", {"by": "eve"}), commit=False
        )
        after_rollback = setup.ergate.get_job(job_id)
        _in_transaction(
            lambda: setup.ergate.signal_job(job_id, "approved", {"by": "ana"}), commit=True
        )
        done = setup.ergate.wait_for_job(job_id, timeout=STUCK)
    assert (after_rollback.status, after_rollback.signals) == (JobStatus.SCHEDULED, {})
    assert done.status is JobStatus.COMPLETED
    assert done.signals == {"approved": {"by": "ana"}}
