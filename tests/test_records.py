"""Hostile records (issue 12, points 1, 2 and 12): job ids that look like step task ids,
records near `ergate_max_payload_bytes`, keys that hold something other than a job, inputs
only JSON encoding refuses, and a job scheduled at the end of the calendar."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import states

from ergate_celery import InvalidInputError, JobNotFoundError, JobStatus, Workflow
from ergate_celery.scheduling.beat import release_due_jobs
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

from .apps.cli_workflows import WORKFLOWS
from .support import Setup, in_process_worker

WAIT = 60


def _two_steps(setup: Setup) -> None:
    workflow = Workflow(unique_name="records")

    @workflow.step
    def first(x: Any) -> Any:
        if isinstance(x, dict) and x.get("raise"):
            raise ValueError("y" * int(x["raise"]))
        return "small" if isinstance(x, str) and x.startswith("small") else x

    @workflow.step
    def second(x: Any) -> Any:
        return "done" if x == "small" else x

    setup.ergate.register_workflow(workflow)


# 1. Step results live where no job id can reach them ---------------------------------------


@pytest.mark.setup("redis", "django_db")
def test_a_step_summary_never_overwrites_a_job_whose_id_looks_like_a_step(setup: Setup) -> None:
    _two_steps(setup)
    later = datetime.now(UTC) + timedelta(hours=1)
    # Under the old scheme, running job "order-5" stored its step summaries at "order-5:0"
    # and "order-5:1": these two jobs.
    setup.ergate.submit_job("records", initial_input_value="small", id="order-5:0")
    setup.ergate.submit_job(
        "records", initial_input_value="v", id="order-5:1", requested_start_time=later
    )
    with in_process_worker(setup.app):
        runner = setup.ergate.submit_job("records", initial_input_value="small", id="order-5")
        assert setup.ergate.wait_for_job(runner.id, timeout=WAIT).status is JobStatus.COMPLETED
        assert setup.ergate.wait_for_job("order-5:0", timeout=WAIT).status is JobStatus.COMPLETED
    scheduled = setup.ergate.get_job("order-5:1")
    assert (scheduled.status, scheduled.workflow_name) == (JobStatus.SCHEDULED, "records")
    # Beat reads the scheduled one as a job, and releases the others.
    assert release_due_jobs(setup.ergate, now=later + timedelta(seconds=1)) == 1
    # The step summaries are there, under the step task ids.
    summary = setup.app.AsyncResult(f"{STEP_TASK_ID_PREFIX}order-5:1").get(timeout=WAIT)
    assert summary["job_id"] == "order-5"


@pytest.mark.setup("redis")
def test_a_job_id_with_the_step_task_prefix_is_refused(setup: Setup) -> None:
    _two_steps(setup)
    with pytest.raises(InvalidInputError, match="step tasks"):
        setup.ergate.submit_job("records", id=f"{STEP_TASK_ID_PREFIX}x:0")
    assert setup.ergate.store.get(f"{STEP_TASK_ID_PREFIX}x:0") is None


# 2. Records near ergate_max_payload_bytes --------------------------------------------------

_MAX = 60_000


def _at_the_limit(make_setup: Callable[..., Setup], name: str) -> Setup:
    """A setup with records of `_MAX` bytes at most, and the two-step "records" workflow."""
    setup = make_setup(name, ergate_max_payload_bytes=_MAX)
    _two_steps(setup)
    return setup


def _largest_accepted_input(setup: Setup, mode: str) -> str:
    """The longest string input (of `mode`'s prefix) submit accepts, to 100 characters."""
    size = _MAX
    while size > 0:
        value = mode + "x" * size
        try:
            job = setup.ergate.submit_job(
                "records",
                initial_input_value=value,
                requested_start_time=datetime.now(UTC) + timedelta(days=1),
            )
        except InvalidInputError as exc:
            if not exc.oversized:
                raise
            size -= 100
            continue
        setup.ergate.store.delete(str(job.id))
        return value
    raise AssertionError("no input accepted")


@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_an_input_just_under_the_submit_limit_reaches_a_final_status(
    make_setup: Callable[..., Setup], setup_name: str
) -> None:
    setup = _at_the_limit(make_setup, setup_name)
    small = _largest_accepted_input(setup, "small")
    echo = _largest_accepted_input(setup, "echo")
    # Submit keeps room for the record to grow: the largest input is well under the limit.
    assert _MAX * 0.85 < len(small) < _MAX * 0.9
    with in_process_worker(setup.app):
        completes = setup.ergate.submit_job("records", initial_input_value=small)
        # Its first step returns the input: the record would double, over the limit.
        too_big = setup.ergate.submit_job("records", initial_input_value=echo)
        done = setup.ergate.wait_for_job(completes.id, timeout=WAIT)
        failed = setup.ergate.wait_for_job(too_big.id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == "done"
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert "ergate_max_payload_bytes" in failed.error.message


@pytest.mark.setup("redis", "django_db")
def test_a_failure_too_large_to_store_is_stored_without_the_values(
    make_setup: Callable[..., Setup], setup_name: str
) -> None:
    setup = _at_the_limit(make_setup, setup_name)
    with in_process_worker(setup.app):
        # The step raises an error whose message alone is larger than the whole limit.
        job = setup.ergate.submit_job(
            "records", initial_input_value={"raise": _MAX * 2, "pad": "p" * 20_000}
        )
        failed = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "ValueError"
    assert "were dropped to store this failure" in failed.error.message
    assert failed.initial_input_value is None


# 12. Clear errors ----------------------------------------------------------------------------


@pytest.mark.setup("redis", "rabbitmq_postgres", "django_db")
def test_get_job_of_a_plain_task_result_says_it_is_not_a_job(setup: Setup) -> None:
    setup.app.backend.store_result("plain-task", {"answer": 42}, states.SUCCESS)
    with pytest.raises(JobNotFoundError, match="not a job"):
        setup.ergate.get_job("plain-task")
    with pytest.raises(JobNotFoundError, match="not a job"):
        setup.ergate.wait_for_job("plain-task", timeout=1)


@pytest.mark.setup("redis")
def test_cli_show_of_a_plain_task_result_exits_2(setup: Setup) -> None:
    setup.app.backend.store_result("plain-task", {"answer": 42}, states.SUCCESS)
    shown = setup.run_celery("ergate", "show", "plain-task")
    assert shown.returncode == 2, (shown.stdout, shown.stderr)
    assert "not a job" in shown.stderr


@pytest.mark.setup("redis")
def test_a_lone_surrogate_in_input_is_invalid_input(setup: Setup) -> None:
    _two_steps(setup)
    for where in ("initial_input_value", "user_context"):
        with pytest.raises(InvalidInputError, match=where):
            setup.ergate.submit_job("records", **{where: {"name": "x\ud800"}})
    assert setup.ergate.store.index_entries("active", datetime.now(UTC), 10) == []


@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_a_job_scheduled_for_year_9999_is_listed(setup: Setup) -> None:
    for workflow in WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    far = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    job = setup.ergate.submit_job("branchy", initial_input_value="later", requested_start_time=far)
    listed = setup.run_celery("ergate", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(row["id"], row["status"]) for row in rows] == [(job.id, "SCHEDULED")]
