"""Celery's own pytest fixtures run workflows, as a user's tests would use them: `celery_app`
and `celery_worker` (celery.contrib.pytest, enabled in conftest.py) on `memory://` and
`cache+memory://`, with a real worker in a thread of this process and no server."""

from typing import Annotated, Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from ergate_celery import Context, ErgateCelery, GoToStep, GoToStepPath, JobStatus, Workflow

orders = Workflow(unique_name="fixture_orders")


@orders.step(paths=[GoToStepPath("ship")])
def validate(order: dict[str, Any], shop: Annotated[dict[str, str], Context()]) -> dict[str, Any]:
    if order.get("paid"):
        raise GoToStep(ship, retval={**order, "shop": shop["name"]})
    return {**order, "shop": shop["name"]}


@orders.step
def charge(order: dict[str, Any]) -> dict[str, Any]:
    return {**order, "paid": True}


@orders.step
def ship(order: dict[str, Any]) -> dict[str, Any]:
    return {**order, "shipped": True}


@pytest.fixture(scope="session")
def celery_config() -> dict[str, Any]:
    return {
        "broker_url": "memory://",
        "result_backend": "cache+memory://",
        # The worker looks for messages every 1 s by default on memory://: each step would wait.
        "broker_transport_options": {"polling_interval": 0.01},
    }


@pytest.fixture
def ergate(celery_app: Celery) -> ErgateCelery:
    """The test app's ErgateCelery, its workflows registered before the worker starts."""
    ergate = ErgateCelery(celery_app)
    ergate.register_workflow(orders)
    return ergate


def test_celery_worker_runs_a_workflow_on_memory(
    ergate: ErgateCelery, celery_app: Celery, celery_worker: TestWorkController
) -> None:
    shop = {"name": "acme"}
    job = ergate.submit_job("fixture_orders", initial_input_value={"sku": "A1"}, user_context=shop)
    paid = ergate.submit_job(
        "fixture_orders", initial_input_value={"sku": "B2", "paid": True}, user_context=shop
    )

    done = ergate.wait_for_job(str(job.id), timeout=30)
    skipped = ergate.wait_for_job(str(paid.id), timeout=30)

    assert (done.status, done.percent_completed) == (JobStatus.COMPLETED, 100.0)
    assert done.last_return_value == {"sku": "A1", "shop": "acme", "paid": True, "shipped": True}
    assert [timing.step for timing in done.timings] == ["validate", "charge", "ship"]
    assert [timing.step for timing in skipped.timings] == ["validate", "ship"]
    result = celery_app.AsyncResult(job.id)
    assert (result.state, result.ready(), result.successful()) == ("COMPLETED", True, True)
    assert result.get(timeout=5)["last_return_value"] == done.last_return_value
