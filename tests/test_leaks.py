"""Leaks (issue 12, points 10 and 11): what logs, Flower and stored task args show of a job
is its id, workflow and step, never its input or user context — for a step retried by Celery
too — and a rejected message's log lines name what is wrong and where, never the values."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery.beat import ScheduleEntry, Scheduler
from celery.result import AsyncResult
from celery.signals import before_task_publish
from pydantic import BaseModel

from ergate_celery import JobStatus, Workflow
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

from .support import Setup, in_process_worker, wait_until

WAIT = 60
SECRET_INPUT = "input-4111-1111-1111-1111"
PASSWORD = "hunter2-password"


def _flaky(setup: Setup) -> None:
    workflow = Workflow(unique_name="leaky")

    @workflow.step(autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0)
    def charge(x: Any, run: Any = None) -> Any:
        if not getattr(charge, "failed", False):
            charge.failed = True  # type: ignore[attr-defined]
            raise ConnectionError("the payment provider hung up")
        return {"charged": True}

    @workflow.step
    def receipt(x: Any) -> Any:
        return x

    setup.ergate.register_workflow(workflow)


@pytest.mark.setup("redis", "django_db")
def test_a_step_retried_by_celery_keeps_its_task_args_redacted(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    _flaky(setup)
    # Celery's pool logs "TaskPool: Apply <request>" at DEBUG when the worker starts at DEBUG.
    caplog.set_level(logging.DEBUG, logger="celery.pool")
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job(
            "leaky", initial_input_value={"card": SECRET_INPUT}, user_context={"pw": PASSWORD}
        )
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.timings[0].attempt == 2  # the first step ran twice: a Celery retry
    applied = [r.getMessage() for r in caplog.records if "TaskPool: Apply" in r.getMessage()]
    assert len(applied) >= 3  # the first run, its retry, the second step
    for line in applied:
        assert SECRET_INPUT not in line
        assert PASSWORD not in line
    retried = [line for line in applied if "'retries': 1" in line]
    assert retried
    assert all("[input and context redacted]" in line for line in retried)
    if setup.name == "django_db":
        from django_celery_results.models import TaskResult

        row = TaskResult.objects.get(task_id=f"{STEP_TASK_ID_PREFIX}{job.id}:0")
        assert "[input and context redacted]" in row.task_args
        assert SECRET_INPUT not in row.task_args


@pytest.mark.setup("redis")
def test_a_rejected_messages_log_lines_and_error_hold_no_values(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    _flaky(setup)
    caplog.set_level(logging.DEBUG, logger="ergate_celery")
    job = setup.ergate.submit_job("leaky", initial_input_value={"card": SECRET_INPUT})
    job_id = str(job.id)
    # The job's own message is removed: left in the queue, it could run the job to its end
    # before the bad messages arrive, and a finished job is not failed by them.
    setup.app.control.purge()
    bad = [
        # Not a job: a field of the wrong type, next to the values.
        {"id": job_id, "workflow_name": 5, "user_context": {"pw": PASSWORD}, "x": SECRET_INPUT},
        {"id": job_id, "steps_completed": PASSWORD, "initial_input_value": SECRET_INPUT},
        # Names no job at all.
        {"card": SECRET_INPUT, "pw": PASSWORD},
        [SECRET_INPUT, PASSWORD],
    ]
    with in_process_worker(setup.app):
        for payload in bad:
            sent = setup.app.send_task("ergate.leaky.charge", args=[payload])
            assert sent.get(timeout=WAIT)["status"] == "REJECTED"
    failed = setup.ergate.get_job(job_id)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "MalformedMessage"
    assert "workflow_name" in failed.error.message  # where it is wrong
    texts = [failed.error.message, failed.error.traceback or ""]
    texts += [r.getMessage() for r in caplog.records if r.name.startswith("ergate_celery")]
    texts += [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("not a job" in text for text in texts)
    for text in texts:
        assert SECRET_INPUT not in text
        assert PASSWORD not in text


class Card(BaseModel):
    number: int
    cvv: int


@pytest.mark.setup("redis", "rabbitmq_postgres", "django_db")
def test_input_that_does_not_fit_its_step_is_told_without_its_values(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    workflow = Workflow(unique_name="payments")

    @workflow.step
    def read_card(x: Any) -> dict[str, Any]:
        return {"number": SECRET_INPUT, "cvv": PASSWORD}

    @workflow.step
    def charge(card: Card) -> int:
        return card.number

    setup.ergate.register_workflow(workflow)
    caplog.set_level(logging.INFO)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("payments", initial_input_value=1)
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
        step = AsyncResult(f"{STEP_TASK_ID_PREFIX}{job.id}:1", app=setup.app)
        wait_until(lambda: step.state == "FAILURE", timeout=WAIT, what="the step's failure")
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.type == "RedactedValidationError"
    assert "number (int_parsing)" in done.error.message
    shown = [done.error.message, done.error.traceback or "", caplog.text]
    shown += [repr(step.result), str(step.traceback)]  # what Flower and AsyncResult show
    for text in shown:
        assert SECRET_INPUT not in text
        assert PASSWORD not in text


@pytest.mark.setup("redis")
def test_a_periodic_jobs_messages_show_no_input(setup: Setup) -> None:
    _flaky(setup)
    key = setup.ergate.add_periodic_job(
        "leaky",
        3600,
        initial_input_value={"card": SECRET_INPUT},
        user_context={"pw": PASSWORD},
    )
    sent: list[dict[str, Any]] = []

    def keep(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
        sent.append(dict(headers or {}))

    before_task_publish.connect(keep, weak=False)
    try:
        scheduler = Scheduler(setup.app, lazy=True)
        entry = ScheduleEntry(name=key, app=setup.app, **setup.app.conf.beat_schedule[key])
        scheduler.apply_async(entry, advance=False)
    finally:
        before_task_publish.disconnect(keep)
    assert [headers["task"] for headers in sent] == ["ergate.submit_job"]
    for shown in (sent[0]["argsrepr"], sent[0]["kwargsrepr"]):
        assert SECRET_INPUT not in shown
        assert PASSWORD not in shown
    assert "leaky" in sent[0]["argsrepr"]
