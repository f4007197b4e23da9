"""Unit tests run with every service down (`make test-unit`): a test here that asks for a
fixture reaching a service fails before the fixture is set up, services up or not."""

from __future__ import annotations

import pytest

#: The fixtures of tests/conftest.py that reach a service (`setup` and `worker` use `make_setup`).
SERVICE_FIXTURES = {"redis_service", "rabbitmq_service", "postgres_service", "make_setup"}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a unit test that asks for a service, before pytest sets up its fixtures."""
    asked = sorted(SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    if asked:
        pytest.fail(
            f"{item.nodeid} asks for {', '.join(asked)}: a unit test uses no broker, backend, "
            "database or worker; it belongs outside tests/unit/",
            pytrace=False,
        )
