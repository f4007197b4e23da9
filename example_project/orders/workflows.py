"""The "process_order" workflow: each step runs as the Celery task ergate.process_order.<step>.

    validate → reserve_stock → charge ─┬─→ ship ──→ notify
                                       └─→ refund ─┘ (card declined)

Found by "ergate_celery.contrib.django" (INSTALLED_APPS), as Celery finds tasks.py modules.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

from django.conf import settings
from django.core.mail import send_mail
from ergate_celery import (
    AbortJob,
    Context,
    CurrentRun,
    Depends,
    GoToStep,
    GoToStepPath,
    NextStepPath,
    Progress,
    ProgressReporter,
    StepRun,
    Workflow,
)

from .services import (
    CATALOG,
    DECLINED_CARD,
    GatewayTimeoutError,
    InventoryClient,
    PaymentGateway,
)

workflow = Workflow(unique_name="process_order")


class Order(TypedDict):
    """The job's input; submit_job checks it against this type before storing anything."""

    sku: str
    quantity: int
    card: str


class Customer(TypedDict):
    """The job's user_context, set by the view that submits the order."""

    user_id: int
    username: str
    email: str


# Dependencies: set up once per step run, torn down when the step ends (also on errors).


def inventory_client() -> Iterator[InventoryClient]:
    client = InventoryClient(warehouse="main")
    try:
        yield client
    finally:
        client.close()


def payment_gateway() -> Iterator[PaymentGateway]:
    yield PaymentGateway()


# Steps: a step's return value is the next step's input.


@workflow.step
def validate(order: Order) -> dict[str, Any]:
    product = CATALOG.get(order["sku"])
    if product is None:
        raise AbortJob(f"Unknown product {order['sku']!r}")  # ends ABORTED, nothing else runs
    if order["quantity"] < 1:
        raise AbortJob("Nothing to ship")
    return {
        **order,
        "product": product.name,
        "total_cents": product.price_cents * order["quantity"],
    }


@workflow.step
def reserve_stock(
    order: dict[str, Any],
    inventory: Annotated[InventoryClient, Depends(inventory_client)],
    progress: Annotated[ProgressReporter, Progress()],
    run: Annotated[StepRun, CurrentRun()],
) -> dict[str, Any]:
    # Raises OutOfStockError for more than services.STOCK units: the job ends FAILED.
    reservation = inventory.reserve(order["sku"], order["quantity"], key=run.idempotency_key)
    ticks = 10  # picking takes a while: report it, so percent_completed moves within the step
    for tick in range(1, ticks + 1):
        time.sleep(settings.ORDERS_PICK_SECONDS / ticks)
        progress.report(tick / ticks)
    return {**order, "reservation": reservation}


# The gateway times out on a first attempt; Celery runs the step again (the same step, not a
# new one). paths= tells the progress estimate that charge may jump to refund.
@workflow.step(
    paths=[NextStepPath(), GoToStepPath("refund")],
    autoretry_for=(GatewayTimeoutError,),
    max_retries=3,
    default_retry_delay=0.5,
)
def charge(
    order: dict[str, Any],
    gateway: Annotated[PaymentGateway, Depends(payment_gateway)],
    run: Annotated[StepRun, CurrentRun()],
) -> dict[str, Any]:
    if order["card"] == DECLINED_CARD:
        raise GoToStep(refund, retval={**order, "payment": None})
    # The same key on every attempt: a gateway that got the first request charges once.
    payment = gateway.charge(
        order["card"],
        order["total_cents"],
        idempotency_key=run.idempotency_key,
        attempt=run.attempt,
    )
    return {**order, "payment": payment, "charge_attempts": run.attempt}


@workflow.step(paths=[GoToStepPath("notify")])
def ship(order: dict[str, Any]) -> dict[str, Any]:
    tracking = f"TRK-{order['reservation'].removeprefix('RES-')[:8].upper()}"
    raise GoToStep(notify, retval={**order, "outcome": "shipped", "tracking": tracking})


@workflow.step
def refund(
    order: dict[str, Any], inventory: Annotated[InventoryClient, Depends(inventory_client)]
) -> dict[str, Any]:
    inventory.release(order["reservation"])
    return {**order, "outcome": "refunded", "reason": "card declined"}


@workflow.step
def notify(
    order: dict[str, Any], customer: Annotated[Customer | None, Context()]
) -> dict[str, Any]:
    if order["outcome"] == "shipped":
        text = f"Your {order['quantity']} × {order['product']} shipped: {order['tracking']}."
    else:
        text = f"Your card was declined; the {order['product']} order was cancelled."
    email = customer["email"] if customer else ""  # jobs submitted without a customer
    if email:
        send_mail(f"Order {order['outcome']}", text, None, [email])
    return {**order, "notified": email or None}
