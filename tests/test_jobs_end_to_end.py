"""Jobs run as chained Celery tasks on a real worker, on every broker/backend setup."""

import threading
import time
from typing import Annotated, Any

import pytest
from celery.result import AsyncResult

from ergate_celery import (
    Context,
    ErgateCelery,
    Job,
    JobStatus,
    Progress,
    ProgressReporter,
    Workflow,
    cancel_job,
    get_job,
    submit_job,
)
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

from .support import Setup, failure, wait_until
from .workflows import blocking_workflow

WAIT = 60


def _order_workflow(name: str = "order") -> Workflow:
    workflow = Workflow(unique_name=name)

    @workflow.step
    def validate(order: dict[str, Any]) -> dict[str, Any]:
        return {**order, "valid": True}

    @workflow.step
    def price(order: dict[str, Any], ctx: Annotated[dict[str, Any], Context()]) -> dict[str, Any]:
        return {**order, "total": order["qty"] * ctx["unit_price"]}

    @workflow.step
    def confirm(order: dict[str, Any]) -> str:
        return f"{order['sku']} x{order['qty']} = {order['total']}"

    return workflow


def _run_order(setup: Setup, worker: Any, order: dict[str, Any], price: int) -> tuple[Job, Job]:
    """Run one order through the order workflow on a worker: the job submitted, and its end."""
    setup.ergate.register_workflow(_order_workflow())
    with worker():
        job = submit_job("order", initial_input_value=order, user_context={"unit_price": price})
        return job, setup.ergate.wait_for_job(job.id, timeout=WAIT)


def test_job_completes_and_lives_in_result_backend(setup: Setup, worker: Any) -> None:
    job, done = _run_order(setup, worker, {"sku": "A1", "qty": 3}, price=5)
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == "A1 x3 = 15"
    assert (done.steps_completed, done.percent_completed) == (3, 100.0)
    result = AsyncResult(job.id, app=setup.app)
    assert result.state == "COMPLETED"
    assert result.result["last_return_value"] == "A1 x3 = 15"
    assert Job.model_validate(result.result) == done


def test_step_tasks_are_named_after_workflow_and_step(setup: Setup) -> None:
    setup.ergate.register_workflow(_order_workflow())
    names = set(setup.app.tasks)
    assert {name for name in names if name.startswith("ergate.order.")} == {
        "ergate.order.validate",
        "ergate.order.price",
        "ergate.order.confirm",
    }
    assert {
        "ergate.release_scheduled_jobs",
        "ergate.recover_stuck_jobs",
        "ergate.submit_job",
    } <= names


def test_running_status_is_visible_while_a_step_runs(setup: Setup, worker: Any) -> None:
    workflow, started, release = blocking_workflow("slow")
    setup.ergate.register_workflow(workflow)
    with worker():
        job = submit_job("slow", initial_input_value=1)
        assert started.wait(WAIT)
        result = AsyncResult(job.id, app=setup.app)
        assert result.state == "RUNNING"
        assert result.ready() is False
        assert get_job(job.id).status is JobStatus.RUNNING
        release.set()
        assert setup.ergate.wait_for_job(job.id, timeout=WAIT).status is JobStatus.COMPLETED


def test_queued_job_cancelled_runs_no_step(setup: Setup, worker: Any) -> None:
    ran: list[int] = []
    workflow = Workflow(unique_name="never")

    @workflow.step
    def record(x: int) -> int:
        ran.append(x)
        return x

    setup.ergate.register_workflow(workflow)
    job = submit_job("never", initial_input_value=1)
    assert job.status is JobStatus.QUEUED
    assert cancel_job(job.id).status is JobStatus.CANCELLED
    with worker():
        # The first step's message still arrives; its task sees the cancel and does nothing.
        summary = AsyncResult(f"{STEP_TASK_ID_PREFIX}{job.id}:0", app=setup.app).get(timeout=WAIT)
    assert summary["dropped"] is True
    assert ran == []
    assert get_job(job.id).status is JobStatus.CANCELLED


def test_running_job_cancelled_stops_at_step_boundary(setup: Setup, worker: Any) -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []
    workflow = Workflow(unique_name="cancel-running")

    @workflow.step
    def first(x: int) -> int:
        ran.append("first")
        started.set()
        assert release.wait(WAIT)
        return x

    @workflow.step
    def second(x: int) -> int:
        ran.append("second")
        return x

    setup.ergate.register_workflow(workflow)
    with worker():
        job = submit_job("cancel-running", initial_input_value=1)
        assert started.wait(WAIT)
        assert cancel_job(job.id).status is JobStatus.CANCELLING
        release.set()
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.CANCELLED
    assert done.steps_completed == 1
    assert ran == ["first"]


@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_a_long_step_stops_at_its_next_progress_report_after_a_cancel(
    setup: Setup, worker: Any
) -> None:
    reporting = threading.Event()
    ran: list[str] = []
    workflow = Workflow(unique_name="long-export")

    @workflow.step
    def export(rows: int, progress: Annotated[ProgressReporter, Progress()]) -> int:
        try:
            for row in range(rows):
                progress.report(row / rows)
                reporting.set()
                time.sleep(0.01)
        finally:
            ran.append("finally")
        ran.append("returned")
        return rows

    @workflow.step
    def notify(rows: int) -> int:
        ran.append("notify")
        return rows

    setup.ergate.register_workflow(workflow)
    with worker():
        job = submit_job("long-export", initial_input_value=60_000)  # 10 minutes uncancelled
        assert reporting.wait(WAIT)
        assert cancel_job(job.id).status is JobStatus.CANCELLING
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.CANCELLED
    assert ran == ["finally"]  # stopped inside the loop; notify never ran
    assert done.current_step_name == "export"
    assert done.error is None


def test_cancelling_a_finished_job_leaves_it_unchanged(setup: Setup, worker: Any) -> None:
    job, done = _run_order(setup, worker, {"sku": "B", "qty": 1}, price=2)
    after = cancel_job(job.id)
    assert after == done
    assert after.status is JobStatus.COMPLETED


def test_celery_retry_reruns_the_same_step(setup: Setup, worker: Any) -> None:
    calls: list[int] = []
    workflow = Workflow(unique_name="flaky")

    @workflow.step(autoretry_for=(ConnectionError,), max_retries=3, default_retry_delay=0)
    def call_api(x: int) -> int:
        calls.append(x)
        if len(calls) < 3:
            raise ConnectionError("upstream timed out")
        return x * 10

    @workflow.step
    def after(x: int) -> int:
        return x + 1

    setup.ergate.register_workflow(workflow)
    with worker():
        job = submit_job("flaky", initial_input_value=4)
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert calls == [4, 4, 4]
    assert done.last_return_value == 41
    assert done.steps_completed == 2  # a retry is the same step run again, not a new step


def test_exhausted_retries_fail_the_job_with_the_error(setup: Setup, worker: Any) -> None:
    workflow = Workflow(unique_name="always-down")

    @workflow.step(autoretry_for=(ConnectionError,), max_retries=1, default_retry_delay=0)
    def call_api(x: int) -> int:
        raise ConnectionError("still down")

    setup.ergate.register_workflow(workflow)
    with worker():
        job = submit_job("always-down", initial_input_value=1)
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert failure(done) == ("ConnectionError", "still down", "call_api")
    assert AsyncResult(job.id, app=setup.app).state == "FAILED"


def test_step_queue_option_routes_the_step(setup: Setup, worker: Any) -> None:
    special = f"{setup.app.conf.task_default_queue}-special"
    workflow = Workflow(unique_name="routed")

    @workflow.step
    def first(x: int) -> int:
        return x + 1

    @workflow.step(queue=special)
    def second(x: int) -> int:
        return x * 2

    setup.ergate.register_workflow(workflow)
    with worker():
        job = submit_job("routed", initial_input_value=1)
        wait_until(lambda: get_job(job.id).steps_completed == 1)
        # No worker consumes `special` yet: the second step's message waits there.
        wait_until(lambda: _waiting_in(setup, special) == 1)
        assert get_job(job.id).status is JobStatus.QUEUED
    from celery.contrib.testing.worker import start_worker

    with start_worker(setup.app, pool="threads", perform_ping_check=False, queues=[special]):
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.last_return_value == 4


def _waiting_in(setup: Setup, queue: str) -> int:
    """How many messages the broker holds in `queue` (0 while it does not exist)."""
    with setup.app.connection_for_write() as connection:
        try:
            return int(connection.default_channel.queue_declare(queue, passive=True).message_count)
        except connection.channel_errors:  # AMQP: a passive declare of a missing queue
            return 0


def test_module_level_helpers_use_the_current_app(setup: Setup, worker: Any) -> None:
    setup.ergate.register_workflow(_order_workflow())
    assert ErgateCelery.of() is setup.ergate
    with worker():
        job = submit_job(
            Job(
                workflow_name="order",
                initial_input_value={"sku": "C", "qty": 2},
                user_context={"unit_price": 1},
            )
        )
        assert setup.ergate.wait_for_job(job.id, timeout=WAIT).last_return_value == "C x2 = 2"
