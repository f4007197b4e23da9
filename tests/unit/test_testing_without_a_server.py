"""A user's test file, with `ergate_celery.testing` alone: a workflow that waits for a signal,
retries a step and sleeps three days runs to the end, and nothing sleeps, starts a thread or
opens a connection (each of them raises here)."""

import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import pytest

from ergate_celery import JobStatus, SignalPayload, Sleep, WaitForSignal, Workflow
from ergate_celery.testing import WorkflowTester

orders = Workflow(unique_name="process_order")
bank_calls: list[str] = []


@orders.step
def ask_approval(order: dict[str, Any]) -> dict[str, Any]:
    raise WaitForSignal("approved", timeout=86400, retval=order)


@orders.step(autoretry_for=(ConnectionError,), max_retries=3, default_retry_delay=30)
def charge(
    order: dict[str, Any], approval: Annotated[dict[str, Any], SignalPayload("approved")]
) -> dict[str, Any]:
    bank_calls.append(order["sku"])
    if len(bank_calls) < 3:
        raise ConnectionError("the bank is down")
    return {**order, "approved_by": approval["by"], "charged": True}


@orders.step
def wait_for_delivery(order: dict[str, Any]) -> dict[str, Any]:
    raise Sleep(seconds=3 * 86400, retval=order)


@orders.step
def close(order: dict[str, Any]) -> dict[str, Any]:
    return {**order, "closed": True}


def _refused(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{what} was called")

    return refuse


@pytest.fixture
def no_sleep_thread_or_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", _refused("time.sleep"))
    monkeypatch.setattr(threading.Thread, "start", _refused("threading.Thread.start"))
    monkeypatch.setattr(socket.socket, "connect", _refused("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", _refused("socket.connect_ex"))


@pytest.mark.usefixtures("no_sleep_thread_or_socket")
def test_a_sleeping_signalled_retried_workflow_runs_to_the_end() -> None:
    with pytest.raises(AssertionError, match=r"Thread\.start"):  # the guard is on
        threading.Thread(target=print).start()
    bank_calls.clear()
    start = datetime(2030, 1, 1, tzinfo=UTC)
    tester = WorkflowTester(orders, now=start)

    job = tester.submit("process_order", initial_input_value={"sku": "A1"})
    tester.run()
    assert tester.get_job(job.id).status is JobStatus.SCHEDULED  # waits for the approval

    tester.signal(job.id, "approved", {"by": "ana"})
    tester.run()
    tester.advance(seconds=30)
    tester.advance(seconds=30)  # the third try succeeds, then the three days start
    assert bank_calls == ["A1", "A1", "A1"]
    assert tester.get_job(job.id).status is JobStatus.SCHEDULED

    tester.advance(days=3)

    done = tester.get_job(job.id)
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == {
        "sku": "A1",
        "approved_by": "ana",
        "charged": True,
        "closed": True,
    }
    assert [(step, attempt) for _, step, attempt in tester.steps_run] == [
        ("ask_approval", 1),
        ("charge", 1),
        ("charge", 2),
        ("charge", 3),
        ("wait_for_delivery", 1),
        ("close", 1),
    ]
    assert done.finished_at == start + timedelta(days=3, seconds=60)
