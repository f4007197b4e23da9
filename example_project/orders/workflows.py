"""The "process_order" workflow: each step runs as the Celery task ergate.process_order.<step>.

    validate → reserve_stock ⋯→ charge ─┬─→ pack ⇉ ship ──→ notify ⋯→ remind
                                        └─→ refund ───────┘ (card declined, or not approved)

⇉ is a fan-out: `pack` starts one `pack_order_line` job per order line and `ship` runs once
they have all ended, with their parcels in line order (the order holds no worker meanwhile).

⋯→ is a wait: an order over ORDERS_APPROVAL_OVER_CENTS waits after reserve_stock for staff
approval (`signal_job(job_id, "approved", {"approved": True, "by": ...})`, sent from the
staff page /approvals/ or the admin), at most ORDERS_APPROVAL_TIMEOUT seconds; with
ORDERS_REMIND_SECONDS set, notify sleeps that long and then remind follows up.

Found by "ergate_celery.contrib.django" (INSTALLED_APPS), as Celery finds tasks.py modules.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated, Any, NotRequired, TypedDict

from django.conf import settings
from django.core.mail import send_mail
from ergate_celery import (
    AbortJob,
    ChildResult,
    Context,
    CurrentRun,
    Depends,
    FanOut,
    FanOutPath,
    GoToEnd,
    GoToEndPath,
    GoToStep,
    GoToStepPath,
    NextStepPath,
    Progress,
    ProgressReporter,
    SignalPayload,
    Sleep,
    StepRun,
    WaitForSignal,
    WaitPath,
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
pack_lines = Workflow(unique_name="pack_order_line")


class Line(TypedDict):
    """One more line of an order: another product."""

    sku: str
    quantity: int


class Order(TypedDict):
    """The job's input; submit_job checks it against this type before storing anything."""

    sku: str
    quantity: int
    card: str
    lines: NotRequired[list[Line]]


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


@workflow.step(paths=[WaitPath("approved")])
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
    reserved = {**order, "reservation": reservation}
    if order["total_cents"] > settings.ORDERS_APPROVAL_OVER_CENTS:
        # Big orders wait for staff, holding no worker; no answer in time fails the job.
        raise WaitForSignal("approved", timeout=settings.ORDERS_APPROVAL_TIMEOUT, retval=reserved)
    return reserved


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
    approval: Annotated[dict[str, Any] | None, SignalPayload("approved")],
) -> dict[str, Any]:
    if approval is not None and not approval.get("approved"):
        reason = f"not approved by {approval.get('by') or 'staff'}"
        raise GoToStep(refund, retval={**order, "payment": None, "reason": reason})
    if order["card"] == DECLINED_CARD:
        raise GoToStep(refund, retval={**order, "payment": None, "reason": "card declined"})
    # The same key on every attempt: a gateway that got the first request charges once.
    payment = gateway.charge(
        order["card"],
        order["total_cents"],
        idempotency_key=run.idempotency_key,
        attempt=run.attempt,
    )
    return {**order, "payment": payment, "charge_attempts": run.attempt}


@workflow.step(paths=[FanOutPath("ship")])
def pack(order: dict[str, Any]) -> None:
    # One child job per order line, packed in parallel by any worker; `ship` gets them all.
    lines = [{"sku": order["sku"], "quantity": order["quantity"]}, *order.get("lines", [])]
    raise FanOut(pack_lines, inputs=[{"line": line, "order": order} for line in lines], then=ship)


@workflow.step(paths=[GoToStepPath("notify")])
def ship(packed: list[ChildResult]) -> dict[str, Any]:
    # Every child carries the order back; a line that could not be packed stops the order.
    unpacked = [result.job_id for result in packed if not result.ok]
    if unpacked:
        raise RuntimeError(f"Lines {unpacked} could not be packed; retry the order's job")
    order = packed[0].value["order"]
    tracking = f"TRK-{order['reservation'].removeprefix('RES-')[:8].upper()}"
    parcels = [result.value["parcel"] for result in packed]
    shipped = {**order, "outcome": "shipped", "tracking": tracking, "parcels": parcels}
    raise GoToStep(notify, retval=shipped)


@workflow.step
def refund(
    order: dict[str, Any], inventory: Annotated[InventoryClient, Depends(inventory_client)]
) -> dict[str, Any]:
    inventory.release(order["reservation"])
    return {**order, "outcome": "refunded", "reason": order.get("reason", "card declined")}


@workflow.step(paths=[WaitPath(), GoToEndPath()])
def notify(
    order: dict[str, Any], customer: Annotated[Customer | None, Context()]
) -> dict[str, Any]:
    if order["outcome"] == "shipped":
        text = f"Your {order['quantity']} × {order['product']} shipped: {order['tracking']}."
    else:
        text = f"Your order of {order['product']} was cancelled: {order['reason']}."
    email = customer["email"] if customer else ""  # jobs submitted without a customer
    if email:
        send_mail(f"Order {order['outcome']}", text, None, [email])
    notified = {**order, "notified": email or None}
    if order["outcome"] == "shipped" and settings.ORDERS_REMIND_SECONDS > 0:
        # "Remind me": the job sleeps in the store, and remind runs when it is due.
        raise Sleep(seconds=settings.ORDERS_REMIND_SECONDS, retval=notified)
    raise GoToEnd(retval=notified)


@workflow.step
def remind(order: dict[str, Any], customer: Annotated[Customer | None, Context()]) -> Any:
    email = customer["email"] if customer else ""
    if email:
        send_mail("How is your order?", f"Enjoying your {order['product']}?", None, [email])
    return {**order, "reminded": bool(email)}


@pack_lines.step
def pack_line(item: dict[str, Any], run: Annotated[StepRun, CurrentRun()]) -> dict[str, Any]:
    line = item["line"]
    product = CATALOG[line["sku"]]
    parcel = f"PCL-{run.job_id.rsplit('.', 1)[1]}-{line['quantity']}x{product.sku}"
    return {"order": item["order"], "parcel": parcel}
