"""The step task body, `execute_step`, called directly with the real step task of an app that
is never started (`memory://`, the memory store), on a `Runtime` whose broker and announcer are
recorded: the claim, the step run once, the outcome and the next step handed on; a duplicate
message dropped; a payload that is not a job rejected; a retry raising Celery's `Retry`; a
lost reply recognised; a next step that cannot be published failing the job."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Retry

from ergate_celery import ErgateCelery, Job, JobStatus, Workflow
from ergate_celery.worker.runtime import Runtime
from ergate_celery.worker.step_body import execute_step
from ergate_celery.worker.step_message import step_message

from ..support import LostReplies, Recorder


@pytest.fixture
def runs(memory_ergate: ErgateCelery) -> list[str]:
    """The steps of workflow "orders" run so far: `charge` (retried on ConnectionError, which
    it raises for an order that says "down"), then `ship`."""
    ran: list[str] = []
    workflow = Workflow(unique_name="orders")

    @workflow.step(autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0)
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        ran.append("charge")
        if order.get("down"):
            raise ConnectionError("payment provider down")
        return {**order, "charged": True}

    @workflow.step
    def ship(order: dict[str, Any]) -> dict[str, Any]:
        ran.append("ship")
        return {**order, "shipped": True}

    memory_ergate.register_workflow(workflow)
    return ran


def _order(ergate: ErgateCelery, **order: Any) -> Job:
    return ergate.submit_job("orders", initial_input_value={"id": 1, **order})


def _run(
    rt: Runtime,
    ergate: ErgateCelery,
    step: str,
    payload: Any,
    *,
    delivered: bool = False,
    whole: bool = False,
) -> dict[str, Any]:
    """Run the message `payload` (a job: the message a publish sends for it, or with `whole`
    the job as JSON, as older versions sent) through the step task `step` of "orders";
    `delivered`: with the request a worker gives a delivered message (a task called directly
    re-raises where a delivered one retries)."""
    if isinstance(payload, Job):
        payload = step_message(payload, whole)
    task: Any = ergate.app.tasks[f"ergate.orders.{step}"]
    if not delivered:
        return execute_step(rt, task.ergate_step, task, payload)
    task.push_request(
        id="ergate-step:delivered", args=[payload], kwargs={}, retries=0, called_directly=False
    )
    try:
        return execute_step(rt, task.ergate_step, task, payload)
    finally:
        task.pop_request()


def test_a_step_is_claimed_run_once_and_its_outcome_hands_the_job_on(
    runtime: Runtime, recorder: Recorder, memory_ergate: ErgateCelery, runs: list[str]
) -> None:
    job = _order(memory_ergate)
    summary = _run(runtime, memory_ergate, "charge", job)
    stored = memory_ergate.get_job(str(job.id))
    assert summary == {
        "job_id": job.id,
        "status": "QUEUED",
        "step": "charge",
        "percent_completed": 50.0,
    }
    assert (stored.status, stored.current_step_name, stored.steps_completed) == (
        JobStatus.QUEUED,
        "ship",
        1,
    )
    assert (stored.claim, stored.last_return_value) == (None, {"id": 1, "charged": True})
    assert recorder.published == [stored]
    assert recorder.changes == [("QUEUED", "RUNNING"), ("RUNNING", "QUEUED")]
    assert runs == ["charge"]


def test_the_last_step_completes_the_job(
    runtime: Runtime, recorder: Recorder, memory_ergate: ErgateCelery, runs: list[str]
) -> None:
    _run(runtime, memory_ergate, "charge", _order(memory_ergate))
    summary = _run(runtime, memory_ergate, "ship", recorder.published[-1])
    done = memory_ergate.get_job(summary["job_id"])
    assert (done.status, done.percent_completed) == (JobStatus.COMPLETED, 100.0)
    assert done.last_return_value == {"id": 1, "charged": True, "shipped": True}
    assert [timing.step for timing in done.timings] == ["charge", "ship"]
    assert runs == ["charge", "ship"]
    assert len(recorder.published) == 1  # nothing after the last step


def test_a_duplicate_message_is_dropped_and_the_step_runs_once(
    runtime: Runtime, recorder: Recorder, memory_ergate: ErgateCelery, runs: list[str]
) -> None:
    job = _order(memory_ergate)
    _run(runtime, memory_ergate, "charge", job)
    again = _run(runtime, memory_ergate, "charge", job)
    assert again["dropped"] is True
    assert runs == ["charge"]
    assert len(recorder.published) == 1
    assert memory_ergate.get_job(str(job.id)).current_step_name == "ship"


def test_a_step_message_names_the_run_and_carries_nothing_the_record_has(
    memory_ergate: ErgateCelery, runs: list[str]
) -> None:
    job = _order(memory_ergate, card="4111-1111")
    sent = step_message(job)
    assert sent == {
        "id": job.id,
        "workflow_name": "orders",
        "status": JobStatus.QUEUED.value,
        "current_step": 0,
        "current_step_name": "charge",
        "steps_completed": 0,
    }
    assert step_message(job, whole=True) == job.model_dump(mode="json")


@pytest.mark.parametrize("whole", [False, True], ids=["place", "whole job"])
def test_a_message_of_either_shape_runs_its_step_once(
    whole: bool, runtime: Runtime, recorder: Recorder, memory_ergate: ErgateCelery, runs: list[str]
) -> None:
    """The whole job is what older versions sent (and `ergate_show_task_args` sends): such a
    message still waiting in the queue when its worker is upgraded runs as a new one."""
    job = _order(memory_ergate)
    summary = _run(runtime, memory_ergate, "charge", job, whole=whole)
    assert summary["status"] == "QUEUED"
    assert _run(runtime, memory_ergate, "charge", job, whole=whole)["dropped"] is True
    _run(runtime, memory_ergate, "ship", recorder.published[0], whole=whole)
    done = memory_ergate.get_job(str(job.id))
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == {"id": 1, "charged": True, "shipped": True}
    assert runs == ["charge", "ship"]


def test_a_payload_that_is_not_a_job_is_rejected_and_fails_the_job_it_names(
    runtime: Runtime, memory_ergate: ErgateCelery, runs: list[str]
) -> None:
    job = _order(memory_ergate)
    malformed = {"id": job.id, "workflow_name": 5}
    summary = _run(runtime, memory_ergate, "charge", malformed)
    assert summary == {"job_id": job.id, "status": "REJECTED", "step": "charge"}
    failed = memory_ergate.get_job(str(job.id))
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "MalformedMessage"
    assert "workflow_name" in failed.error.message  # where it is wrong, not the value
    # Names no job at all: dropped, nothing to fail.
    assert _run(runtime, memory_ergate, "charge", [1, 2])["job_id"] is None
    assert runs == []


def test_a_retried_step_raises_celerys_retry_and_gives_its_claim_back(
    runtime: Runtime, recorder: Recorder, memory_ergate: ErgateCelery, runs: list[str]
) -> None:
    job = _order(memory_ergate, down=True)
    with pytest.raises(Retry) as raised:
        _run(runtime, memory_ergate, "charge", job, delivered=True)
    assert isinstance(raised.value.exc, ConnectionError)
    stored = memory_ergate.get_job(str(job.id))
    # Still this step's run, unclaimed: the retry's message claims it again.
    assert (stored.status, stored.claim, stored.steps_completed) == (JobStatus.RUNNING, None, 0)
    assert recorder.published == []  # Celery sends the retry itself
    assert runs == ["charge"]


@pytest.mark.parametrize("lost", ["claim", "outcome"])
def test_a_write_whose_reply_was_lost_is_recognised_and_announced_once(
    lost: str,
    memory_ergate: ErgateCelery,
    recorder: Recorder,
    runs: list[str],
    backoffs: list[float],
) -> None:
    store = LostReplies(memory_ergate.store, {1 if lost == "claim" else 2})
    rt = Runtime(
        store=store,  # type: ignore[arg-type]
        settings=memory_ergate.settings,
        announce=recorder.announce,  # type: ignore[arg-type]
        publish=recorder.publish,
    )
    job = _order(memory_ergate)
    summary = _run(rt, memory_ergate, "charge", job)
    assert summary["status"] == "QUEUED"
    assert len(backoffs) == 1  # the write was tried again once
    assert runs == ["charge"]
    assert recorder.changes == [("QUEUED", "RUNNING"), ("RUNNING", "QUEUED")]
    assert recorder.published == [memory_ergate.get_job(str(job.id))]


def test_a_next_step_that_cannot_be_published_fails_the_job(
    memory_ergate: ErgateCelery, recorder: Recorder, runs: list[str], backoffs: list[float]
) -> None:
    def broker_down(job: Job) -> None:
        raise ConnectionError("broker down")

    rt = Runtime(
        store=memory_ergate.store,
        settings=memory_ergate.settings,
        announce=recorder.announce,  # type: ignore[arg-type]
        publish=broker_down,
    )
    job = _order(memory_ergate)
    with pytest.raises(ConnectionError, match="broker down"):
        _run(rt, memory_ergate, "charge", job)
    failed = memory_ergate.get_job(str(job.id))
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert "The next step could not be published: broker down" in failed.error.message
    assert len(backoffs) == 2  # ergate_after_step_attempts=3 tries
    assert recorder.changes[-1] == ("QUEUED", "FAILED")
