"""Fixtures: one per real service, in this run's own namespace; one per broker/backend setup;
an in-process worker on it. What they are built from is in support.py and services.py.

Where a test goes:
- `tests/unit/`: needs no broker, backend, database or worker (`make test-unit` runs them
  alone, with every service down); one module per topic.
- `tests/test_<topic>.py`: runs on real services, with in-process workers or `celery`
  subprocesses; one module per topic (outages, worker loss, sweep, duplicates, waiting,
  records, leaks, input, scheduling, operations, monitoring, stores, cli, django, ...), named
  after what it tests, never after the issue that added it. A topic may have both: the pure
  part in `tests/unit/test_<topic>.py`, the part with workers in `tests/test_<topic>.py`.
- `tests/differential/`: each case on ergate's own runner and on ours, traces compared.
- Shared fixtures live here; shared helpers under public names in the support modules:
  support.py (setups, in-process worker, `wait_until`), services.py (the services),
  faults.py (killable `celery worker` subprocesses, a supervisor, a Redis server of a test's
  own), django_support.py; `tests/apps/` holds the apps the `celery` subprocesses load. A
  test module imports from these, never from another test module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from ergate_celery import ErgateCelery

from .django_support import configure_django
from .services import (
    NOTES,
    PostgresService,
    RabbitMQService,
    RedisService,
    claimed,
    release_run_lock,
)
from .support import (
    SETUPS,
    Setup,
    cleanup_setup,
    in_process_worker,
    services_for,
    setup_conf,
)

TESTS = Path(__file__).parent

# Celery's own fixtures (celery_app, celery_worker, ...), enabled as Celery's docs tell users
# to: tests/test_celery_fixtures.py uses them as a user's tests would.
pytest_plugins = ("celery.contrib.pytest",)


@pytest.fixture(scope="session")
def redis_service() -> Iterator[RedisService]:
    """A Redis database of this run's own."""
    yield from claimed(RedisService)


@pytest.fixture(scope="session")
def rabbitmq_service() -> Iterator[RabbitMQService]:
    """A RabbitMQ vhost of this run's own."""
    yield from claimed(RabbitMQService)


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[PostgresService]:
    """A PostgreSQL schema of this run's own."""
    yield from claimed(PostgresService)


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Django configured for this process (once), with a migrated database (the django-db
    store, the console and the admin)."""
    folder = tmp_path_factory.mktemp("django")
    configure_django(folder)
    return folder


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test using `setup` once per setup; `@pytest.mark.setup("redis")` narrows it."""
    if "setup_name" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("setup")
        names = list(marker.args) if marker is not None else list(SETUPS)
        metafunc.parametrize("setup_name", names)


#: The modules whose tests took longest in a full run (`--durations`), longest first. They run
#: first: with `--dist worksteal` (pyproject addopts) one pytest process starts on them while the
#: other takes the short tests, and takes its share of what is left at the end, so no long
#: test starts last and holds up the run alone.
LONG_FIRST = tuple(
    TESTS / name
    for name in (
        "test_soak.py",
        "test_soak_postgres.py",
        "test_lifecycle_workers.py",
        "test_worker_loss.py",
        "test_beat.py",
        "test_outages.py",
        "test_example_project.py",
        "test_bench_smoke.py",
    )
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the tests of `LONG_FIRST` first, in its order (the rest keep theirs)."""

    def rank(item: pytest.Item) -> int:
        return LONG_FIRST.index(item.path) if item.path in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: a module's tests keep their order


def pytest_sessionfinish() -> None:
    """The services' namespaces are gone (session fixtures end before this): so is the run."""
    release_run_lock()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where this run kept its data (and whether it could keep it apart)."""
    if NOTES:
        terminalreporter.write_sep("-", "ergate test namespace")
        for note in NOTES:
            terminalreporter.write_line(note)


@pytest.fixture
def make_setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    """Build a fresh app and ErgateCelery on a named setup (cleaned up afterwards)."""
    made: list[Setup] = []

    def make(name: str, **extra: Any) -> Setup:
        services = services_for(request, name)
        conf = {**setup_conf(name, tmp_path, services), **extra}
        app = Celery(f"test_{name}", set_as_current=True)
        app.conf.update(conf)
        setup = Setup(name, app, ErgateCelery(app), conf, tmp_path, services)
        made.append(setup)
        return setup

    yield make
    for setup in made:
        cleanup_setup(setup.name, setup.app, setup.services)


@pytest.fixture
def setup(setup_name: str, make_setup: Callable[[str], Setup]) -> Setup:
    """A fresh app on each setup in turn."""
    return make_setup(setup_name)


@pytest.fixture
def worker(setup: Setup) -> Callable[[], Any]:
    """Start an in-process worker (2 threads) for `setup.app` once the test registered its
    workflows: `with worker(): ...`."""

    return lambda: in_process_worker(setup.app)
