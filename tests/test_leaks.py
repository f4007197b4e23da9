"""Leaks (issue 12, points 10 and 11): what logs, Flower and stored task args show of a job
is its id, workflow and step, never its input or user context — for a step retried by Celery
too — and a rejected message's log lines name what is wrong and where, never the values."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ergate_celery import JobStatus, Workflow
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

from .support import Setup, in_process_worker

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
