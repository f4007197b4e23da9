"""What the operations say when something is off, on real workers: a retry whose step a deploy
removed says so; an id that names a step task's result is "no such job", with nothing of that
record's values; an id is free again once its job expired and was cleaned up. And a step
message as older versions sent it (the whole job), still in the queue when its worker is
upgraded, runs."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from ergate_celery import (
    ErgateCelery,
    JobNotFoundError,
    JobStatus,
    UnknownStepError,
    Workflow,
)
from ergate_celery.stores.base import job_document
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX, step_task_id

from .support import Setup, in_process_worker, wait_until
from .workflows import echo_workflow

WAIT = 60


@pytest.mark.setup("redis", "rabbitmq_postgres", "django_db")
def test_a_step_task_id_is_no_such_job(setup: Setup, worker: Any) -> None:
    setup.ergate.register_workflow(echo_workflow("echo", "only"))
    with worker():
        job = setup.ergate.submit_job("echo", initial_input_value={"card": "4111-1111"})
        setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    foreign = f"{STEP_TASK_ID_PREFIX}{job.id}:0"
    for operation in (
        lambda: setup.ergate.signal_job(foreign, "approved"),
        lambda: setup.ergate.retry_job(foreign),
        lambda: setup.ergate.get_job(foreign),
        lambda: setup.ergate.cancel_job(foreign),
    ):
        with pytest.raises(JobNotFoundError, match=r"^No job with id") as raised:
            operation()
        said = str(raised.value)
        assert "validation error" not in said
        assert "percent_completed" not in said
        assert "input_value" not in said
        assert raised.value.__context__ is None
        assert raised.value.__cause__ is None


@pytest.mark.setup("redis", "rabbitmq_postgres", "django_db")
def test_a_retry_whose_step_a_deploy_removed_says_so(setup: Setup) -> None:
    broken = Workflow(unique_name="orders")

    @broken.step
    def prepare(order: dict[str, Any]) -> dict[str, Any]:
        return order

    @broken.step
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        raise ConnectionError("payment provider down")

    setup.ergate.register_workflow(broken)
    with in_process_worker(setup.app):
        job_id = str(setup.ergate.submit_job("orders", initial_input_value={"id": 1}).id)
        assert setup.ergate.wait_for_job(job_id, timeout=WAIT).status is JobStatus.FAILED
    # The next deploy renamed the step the job stopped at.
    deployed_app = Celery("deployed", set_as_current=False)
    deployed_app.conf.update(setup.conf)
    deployed = ErgateCelery(deployed_app)
    deployed.register_workflow(echo_workflow("orders", "prepare", "charge_card"))
    with pytest.raises(UnknownStepError, match=r"'charge'.*FAILED") as raised:
        deployed.retry_job(job_id)
    assert "retry" in str(raised.value)
    stored = deployed.get_job(job_id)
    assert stored.status is JobStatus.FAILED
    assert stored.error is not None
    assert stored.error.type == "UnknownStep"
    assert stored.retries == 1


@pytest.mark.setup("redis", "rabbitmq_postgres", "django_db")
def test_an_id_is_free_again_once_its_job_expired_and_was_cleaned_up(
    make_setup: Any, setup_name: str
) -> None:
    setup = make_setup(setup_name, result_expires=1)
    setup.ergate.register_workflow(echo_workflow("echo", "only"))
    cleanup = setup.app.tasks["celery.backend_cleanup"]

    def expired() -> bool:
        cleanup()  # what beat runs daily where the backend does not expire records itself
        try:
            setup.ergate.get_job("invoice-17")
        except JobNotFoundError:
            return True
        return False

    with in_process_worker(setup.app):
        first = setup.ergate.submit_job("echo", initial_input_value=1, id="invoice-17")
        assert setup.ergate.wait_for_job(str(first.id), timeout=WAIT).status is JobStatus.COMPLETED
        wait_until(expired, timeout=WAIT, interval=0.5, what="the job expired and was cleaned up")
        again = setup.ergate.submit_job(
            "echo", initial_input_value=2, id="invoice-17", tags={"k": "v"}
        )
        done = setup.ergate.wait_for_job(str(again.id), timeout=WAIT)
    assert (done.status, done.last_return_value) == (JobStatus.COMPLETED, 2)
    listed = setup.ergate.list_jobs(tags={"k": "v"}).jobs
    assert [job.id for job in listed] == ["invoice-17"]


@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_a_message_of_the_whole_job_left_by_an_older_version_runs(setup: Setup) -> None:
    setup.ergate.register_workflow(echo_workflow("upgraded", "first", "second"))
    job = setup.ergate.submit_job("upgraded", initial_input_value={"n": 1})
    setup.app.control.purge()  # the new message goes; the old one waits in its place
    setup.app.send_task(
        "ergate.upgraded.first", args=[job_document(job)], task_id=step_task_id(job)
    )
    with in_process_worker(setup.app):
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    assert (done.status, done.last_return_value) == (JobStatus.COMPLETED, {"n": 1})
    assert [timing.step for timing in done.timings] == ["first", "second"]
