"""Bad messages and bad step results at the worker: the job ends FAILED with the reason when it
can be identified, and the same worker goes on serving the next job."""

import logging
from typing import Annotated, Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from celery.signals import before_task_publish

from ergate_celery import CurrentRun, ErgateCelery, JobStatus, StepRun, Workflow
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

from .support import Setup, in_process_worker, wait_until
from .workflows import blocking_workflow, echo_workflow

WAIT = 60


def _healthy(setup: Setup) -> None:
    workflow = Workflow(unique_name="healthy")

    @workflow.step
    def double(x: int) -> int:
        return x * 2

    setup.ergate.register_workflow(workflow)


def _assert_worker_still_serves(setup: Setup) -> None:
    job = setup.ergate.submit_job("healthy", initial_input_value=21)
    assert setup.ergate.wait_for_job(job.id, timeout=WAIT).last_return_value == 42


def _fragile(setup: Setup) -> Workflow:
    workflow = Workflow(unique_name="fragile")

    @workflow.step
    def first(x: Any) -> Any:
        if x == "unserializable":
            return object()
        if x == "huge":
            return "x" * 2_000_000
        return x

    @workflow.step
    def second(x: Any) -> Any:
        return x

    setup.ergate.register_workflow(workflow)
    return workflow


@pytest.mark.parametrize(
    ("value", "error_type", "match"),
    [
        ("unserializable", "InvalidInputError", "not JSON-serializable"),
        ("huge", "InvalidInputError", "ergate_max_payload_bytes"),
    ],
)
def test_unstorable_return_value_fails_the_job(
    setup: Setup, worker: Any, value: str, error_type: str, match: str
) -> None:
    _fragile(setup)
    _healthy(setup)
    with worker():
        job = setup.ergate.submit_job("fragile", initial_input_value=value)
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
        _assert_worker_still_serves(setup)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert (done.error.type, done.error.step) == (error_type, "first")
    assert match in done.error.message
    assert done.last_return_value is None  # the last good value is kept
    assert done.steps_completed == 0


def test_message_that_is_not_a_job_is_dropped(setup: Setup, worker: Any) -> None:
    _fragile(setup)
    _healthy(setup)
    with worker():
        for i, garbage in enumerate(["not a job", 42, None, {"no": "id"}, [1, 2]]):
            result = setup.app.send_task("ergate.fragile.first", args=[garbage], task_id=f"g{i}")
            assert result.get(timeout=WAIT)["status"] == "REJECTED"
        _assert_worker_still_serves(setup)


def test_malformed_message_naming_a_live_job_fails_it(setup: Setup, worker: Any) -> None:
    _fragile(setup)
    _healthy(setup)
    job = setup.ergate.submit_job("fragile", initial_input_value="fine")
    # The genuine first message is already queued; this broken one names the same job.
    setup.app.send_task(
        "ergate.fragile.first", args=[{"id": job.id, "workflow_name": 5}], task_id="broken"
    )
    with worker():
        AsyncResult("broken", app=setup.app).get(timeout=WAIT)
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
        _assert_worker_still_serves(setup)
    # Whichever message came first, the job ended and never forked: either the genuine
    # message ran it to completion, or the broken one failed it first.
    if done.status is JobStatus.FAILED:
        assert done.error is not None
        assert done.error.type == "MalformedMessage"
    else:
        assert done.status is JobStatus.COMPLETED


@pytest.mark.setup("redis", "rabbitmq_postgres", "django_db")
def test_a_bad_message_harms_only_its_own_job(setup: Setup, worker: Any) -> None:
    workflow, started, release = blocking_workflow("blocking")
    setup.ergate.register_workflow(workflow)
    setup.ergate.register_workflow(echo_workflow("other", "o1"))
    try:
        with worker():
            victim = str(setup.ergate.submit_job("blocking", initial_input_value=1).id)
            assert started.wait(WAIT)
            # Another workflow's step naming the job, and a bad copy of its own running step.
            for task, payload in (
                ("ergate.other.o1", {"id": victim}),
                ("ergate.blocking.first", {"id": victim, "workflow_name": 5}),
            ):
                sent = setup.app.send_task(task, args=[payload])
                assert sent.get(timeout=WAIT) == {
                    "job_id": None,
                    "status": "REJECTED",
                    "step": task.rsplit(".", 1)[1],
                }
                assert setup.ergate.get_job(victim).status is JobStatus.RUNNING
            release.set()
            done = setup.ergate.wait_for_job(victim, timeout=WAIT)
    finally:
        release.set()
    assert done.status is JobStatus.COMPLETED


def test_oversized_message_is_rejected(setup: Setup, worker: Any) -> None:
    _fragile(setup)
    _healthy(setup)
    job = setup.ergate.submit_job("fragile", initial_input_value="fine")
    oversized = {**job.model_dump(mode="json"), "user_context": "x" * 1_100_000}
    setup.ergate.cancel_job(job.id)
    with worker():
        result = setup.app.send_task("ergate.fragile.first", args=[oversized], task_id="big")
        assert result.get(timeout=WAIT)["status"] == "REJECTED"
        _assert_worker_still_serves(setup)


def test_step_unknown_to_the_worker_fails_the_job_after_the_wait(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    # The submitting app knows a workflow that the worker's deploy no longer has.
    _fragile(setup)
    job = setup.ergate.submit_job(
        "fragile", initial_input_value="fine", user_context={"card": "4111-1111-SECRET"}
    )
    worker_app = Celery("deployed", set_as_current=False)
    worker_app.conf.update(setup.conf, ergate_unknown_step_wait=1)
    deployed = ErgateCelery(worker_app)
    healthy = Workflow(unique_name="healthy")

    @healthy.step
    def double(x: int) -> int:
        return x * 2

    deployed.register_workflow(healthy)
    with caplog.at_level(logging.WARNING), in_process_worker(worker_app):
        done = deployed.wait_for_job(job.id, timeout=WAIT)
        follow_up = deployed.submit_job("healthy", initial_input_value=1)
        assert deployed.wait_for_job(follow_up.id, timeout=WAIT).status is JobStatus.COMPLETED
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.type == "UnknownStep"
    assert "ergate.fragile.first" in done.error.message
    assert "in 1 s (ergate_unknown_step_wait)" in done.error.message
    assert "autodiscover_workflows" in done.error.message  # the likely cause first
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "which this worker does not have" in logged
    assert "goes back to the queue" in logged  # it waited for a worker that has the step
    assert "4111-1111-SECRET" not in logged  # Celery's own line would print the body
    assert "Received unregistered task" not in logged
    worker_app.close()


@pytest.mark.setup("redis")
def test_a_step_unknown_to_one_worker_waits_for_a_worker_that_has_it(
    setup_name: str, make_setup: Any
) -> None:
    from .apps.cli_workflows import WORKFLOWS

    setup = make_setup(setup_name, ergate_unknown_step_wait=20)
    for workflow in WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    job = setup.ergate.submit_job(
        "cli_steps", initial_input_value={}, user_context={"card": "4111-1111-SECRET"}
    )

    def log() -> str:
        return "".join(p.read_text(errors="replace") for p in setup.tmp_path.glob("celery-*.log"))

    # A worker without the workflow (as one that never imported the workflows module) hands
    # the message back, again and again; stopped, it hands back the copy it held.
    with setup.celery("worker", "-P", "solo", "-l", "WARNING", module="tests.apps.bare_app"):
        wait_until(lambda: log().count("goes back to the queue") >= 2, 60, what="hand-backs")
    assert setup.ergate.get_job(job.id).status is JobStatus.QUEUED
    with in_process_worker(setup.app):
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert "does not have" in log()
    assert "4111-1111-SECRET" not in log()


def test_pickled_message_is_refused(
    setup: Setup, worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _fragile(setup)
    _healthy(setup)
    job = setup.ergate.submit_job("fragile", initial_input_value="fine")
    setup.ergate.cancel_job(job.id)

    def refused() -> bool:
        return any(
            "Refusing to deserialize untrusted content of type pickle" in record.getMessage()
            for record in caplog.records
        )

    with caplog.at_level(logging.ERROR, logger="celery.worker.consumer"), worker():
        setup.app.send_task(
            "ergate.fragile.first",
            args=[job.model_dump(mode="json")],
            serializer="pickle",
            task_id="pickled",
        )
        # The worker saw the message and refused it: Celery logs that and drops the message.
        wait_until(refused, 60, what="the worker to refuse the pickled message")
        _assert_worker_still_serves(setup)
    # The worker accepts JSON only: the pickled message never ran, so it stored no summary.
    assert AsyncResult("pickled", app=setup.app).state == "PENDING"


@pytest.mark.setup("redis")
def test_task_args_are_redacted_unless_enabled(setup_name: str, make_setup: Any) -> None:
    shown: dict[str, str] = {}

    def capture(sender: str, headers: dict[str, Any], **kwargs: Any) -> None:
        if sender.startswith("ergate.healthy."):
            shown[headers["id"]] = headers["argsrepr"]

    before_task_publish.connect(capture, weak=False)
    try:
        for flag in (False, True):
            setup = make_setup(setup_name, ergate_show_task_args=flag)
            _healthy(setup)
            job = setup.ergate.submit_job(
                "healthy", initial_input_value=4, user_context={"email": "ann@example.com"}
            )
            text = shown[f"{STEP_TASK_ID_PREFIX}{job.id}:0"]
            assert job.id in text
            assert ("ann@example.com" in text) is flag
            assert "healthy" in text
    finally:
        before_task_publish.disconnect(capture)


def test_steps_get_a_stable_idempotency_key(setup: Setup, worker: Any) -> None:
    runs: list[StepRun] = []
    workflow = Workflow(unique_name="keyed")

    @workflow.step(autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0)
    def charge(x: int, run: Annotated[StepRun, CurrentRun()]) -> int:
        runs.append(run)
        if run.attempt == 1:
            raise ConnectionError("gateway timeout")
        return x

    setup.ergate.register_workflow(workflow)
    with worker():
        job = setup.ergate.submit_job("keyed", initial_input_value=5)
        assert setup.ergate.wait_for_job(job.id, timeout=WAIT).status is JobStatus.COMPLETED
    assert [r.attempt for r in runs] == [1, 2]
    assert {r.idempotency_key for r in runs} == {f"{job.id}:0:0"}
    assert (runs[0].job_id, runs[0].step_name, runs[0].workflow_name) == (job.id, "charge", "keyed")
