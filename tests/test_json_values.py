"""Input, context and step results are JSON: what a JSON round trip would change is refused,
with the path of the offending value, unless the receiving step's type parses it back."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from ergate_celery import InvalidInputError, JobNotFoundError, JobStatus, Workflow

from .support import Setup

WAIT = 60


class Price(BaseModel):
    amount: Decimal
    currency: str


def _workflows(setup: Setup, received: list[Any]) -> None:
    plain = Workflow(unique_name="plain")

    @plain.step
    def first(order: dict[str, Any]) -> Any:
        return order

    @plain.step
    def second(order: Any) -> Any:
        received.append(order)
        return order

    typed = Workflow(unique_name="typed_input")

    @typed.step
    def priced(price: Price) -> datetime:
        received.append(price)
        return datetime(2030, 1, 2, 3, 4, tzinfo=UTC)

    @typed.step
    def dated(when: datetime) -> str:
        received.append(when)
        return when.isoformat()

    setup.ergate.register_workflow(plain)
    setup.ergate.register_workflow(typed)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"initial_input_value": {"items": [{"price": Decimal("1.5")}]}},
            r"initial_input_value\['items'\]\[0\]\['price'\]: Decimal is not JSON",
        ),
        ({"user_context": {"seen": {1, 2}}}, r"user_context\['seen'\]: set is not JSON"),
        ({"initial_input_value": {1: "one"}}, "key 1 \\(int\\) is not a JSON key"),
    ],
)
def test_submit_refuses_what_json_would_change(
    setup: Setup, kwargs: dict[str, Any], match: str
) -> None:
    _workflows(setup, [])
    arguments = {"initial_input_value": {}, **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        setup.ergate.submit_job("plain", id="refused", **arguments)
    with pytest.raises(JobNotFoundError):
        setup.ergate.get_job("refused")


def test_a_result_json_would_change_fails_the_job_with_its_path(setup: Setup, worker: Any) -> None:
    received: list[Any] = []
    workflow = Workflow(unique_name="decimal_result")

    @workflow.step
    def pay(order: Any) -> Any:
        return {"lines": [{"price": Decimal("1.5")}]}

    @workflow.step
    def after(order: Any) -> Any:
        received.append(order)
        return order

    setup.ergate.register_workflow(workflow)
    with worker():
        job = setup.ergate.submit_job("decimal_result", initial_input_value={})
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert (done.error.type, done.error.step) == ("InvalidInputError", "pay")
    assert "return value['lines'][0]['price']: Decimal is not JSON" in done.error.message
    assert done.last_return_value is None  # the last good value is kept
    assert received == []  # the next step never ran


def test_a_step_whose_type_parses_it_back_receives_the_value(setup: Setup, worker: Any) -> None:
    received: list[Any] = []
    _workflows(setup, received)
    price = Price(amount=Decimal("1.5"), currency="EUR")
    with worker():
        job = setup.ergate.submit_job("typed_input", initial_input_value=price)
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.initial_input_value == {"amount": "1.5", "currency": "EUR"}  # stored as JSON
    assert received == [price, datetime(2030, 1, 2, 3, 4, tzinfo=UTC)]
    assert done.last_return_value == "2030-01-02T03:04:00+00:00"
