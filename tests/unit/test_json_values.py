"""The JSON rules alone: what a JSON round trip would change is named with the path of the
offending value."""

from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from ergate_celery.model.json_values import non_json


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"items": [{}, {}, {"price": Decimal("1.5")}]}, "['items'][2]['price']: Decimal is not"),
        ({"raw": b"x"}, "['raw']: bytes is not JSON"),
        ({"tags": {"a"}}, "['tags']: set is not JSON (it would come back a list)"),
        ([1, (2, 3)], "[1]: tuple is not JSON (it would come back a list)"),
        ({(1, 2): "x"}, ": key (1, 2) (tuple) is not a JSON key"),
        ({"n": {1: "x"}}, "['n']: key 1 (int) is not a JSON key"),
        ({"at": datetime(2030, 1, 1)}, "['at']: datetime is not JSON"),
        (float("nan"), ": nan is not JSON"),
    ],
)
def test_non_json_names_the_path(value: Any, problem: str) -> None:
    message = non_json(value, "initial_input_value")
    assert message is not None
    assert message.startswith("initial_input_value")
    assert problem in message


def test_plain_json_passes() -> None:
    assert non_json({"a": [1, 2.5, "x", None, True, {"b": []}]}, "v") is None
