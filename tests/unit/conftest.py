"""Unit tests run with every service down (`make test-unit`): a test here that asks for a
fixture reaching a service fails before the fixture is set up, services up or not. What they
use instead: an app that is never started, on `memory://` and the memory store, and a
`Runtime` whose broker and announcer are recorded."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from celery import Celery

from ergate_celery import ErgateCelery
from ergate_celery.worker import runtime as runtime_module
from ergate_celery.worker.runtime import Runtime

from ..support import Recorder

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


@pytest.fixture
def memory_app() -> Iterator[Celery]:
    """An app that is never started: broker `memory://`, jobs in the process's memory cache
    (`cache+memory://`) under a key prefix, a queue and a job index of its own."""
    name = f"unit-{uuid.uuid4().hex[:12]}"
    app = Celery(name, set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        result_backend="cache+memory://",
        result_backend_transport_options={"global_keyprefix": name},
        task_default_queue=name,
        ergate_index_name=name,
        ergate_after_step_attempts=3,
    )
    yield app
    app.close()


@pytest.fixture
def memory_ergate(memory_app: Celery) -> Iterator[ErgateCelery]:
    """The app's ErgateCelery, on the memory store."""
    ergate = ErgateCelery(memory_app)
    yield ergate
    ergate.close()


@pytest.fixture
def recorder() -> Recorder:
    """What the `runtime` fixture published and announced."""
    return Recorder()


@pytest.fixture
def runtime(memory_ergate: ErgateCelery, recorder: Recorder) -> Runtime:
    """A Runtime on the memory store that publishes and announces into `recorder`."""
    return Runtime(
        store=memory_ergate.store,
        settings=memory_ergate.settings,
        announce=recorder.announce,  # type: ignore[arg-type]
        publish=recorder.publish,
    )


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses `Runtime.retrying` would sleep between its tries, not slept."""
    pauses: list[float] = []
    monkeypatch.setattr(runtime_module, "time", SimpleNamespace(sleep=pauses.append))
    return pauses
