"""Fixtures: one per real broker/backend setup, and an in-process worker on it."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import STDOUT, CompletedProcess, Popen, TimeoutExpired, run
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state

from ergate_celery import ErgateCelery

from .django_support import configure_django
from .services import (
    POSTGRES_HOST,
    POSTGRES_PORT,
    POSTGRES_URL,
    RABBITMQ_HOST,
    RABBITMQ_PORT,
    RABBITMQ_URL,
    REDIS_HOST,
    REDIS_PORT,
    REDIS_URL,
    TEST_SCHEMA,
    redis_flush,
    require,
)

ROOT = Path(__file__).resolve().parent.parent
SETUPS = ("redis", "rabbitmq_postgres", "embedded")
#: Every job store: the setups' (Redis, SQLAlchemy on PostgreSQL and SQLite), and django-db
#: (django-celery-results on SQLite, broker Redis). Store tests run on all of them with
#: `pytestmark = pytest.mark.setup(*STORES)`.
STORES = (*SETUPS, "django_db")


@dataclass
class Setup:
    """A configured Celery app with its ErgateCelery, on one broker/backend pair."""

    name: str
    app: Celery
    ergate: ErgateCelery
    conf: dict[str, Any]
    tmp_path: Path

    @contextmanager
    def celery(
        self, *args: str, env: dict[str, str] | None = None, module: str = "tests.apps.beat_app"
    ) -> Iterator[Popen[bytes]]:
        """Run `celery -A <module> <args>` on this setup until the block ends."""
        environment = {
            **os.environ,
            "ERGATE_TEST_CONF": json.dumps(self.conf),
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        log = (self.tmp_path / f"celery-{args[0]}-{time.monotonic_ns()}.log").open("wb")
        process = Popen(
            [sys.executable, "-m", "celery", "-A", module, *args],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=STDOUT,
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except TimeoutExpired:
                process.kill()
                process.wait()
            log.close()

    def run_celery(
        self, *args: str, timeout: float = 120, module: str = "tests.apps.beat_app"
    ) -> CompletedProcess[str]:
        """Run the one-shot command `celery -A <module> <args>` on this setup; output captured."""
        return run(
            [sys.executable, "-m", "celery", "-A", module, *args],
            cwd=ROOT,
            env={**os.environ, "ERGATE_TEST_CONF": json.dumps(self.conf), "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _postgres_empty() -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {TEST_SCHEMA} CASCADE"))
        conn.execute(sa.text(f"CREATE SCHEMA {TEST_SCHEMA}"))
    engine.dispose()


def _conf(name: str, tmp_path: Path) -> dict[str, Any]:
    queue = f"ergate-test-{uuid.uuid4().hex[:12]}"
    common: dict[str, Any] = {
        "task_default_queue": queue,
        "broker_connection_retry_on_startup": False,
        "result_extended": True,
        "worker_hijack_root_logger": False,
    }
    if name == "redis":
        require("Redis", REDIS_HOST, REDIS_PORT)
        redis_flush()
        return {
            **common,
            "broker_url": REDIS_URL,
            "result_backend": REDIS_URL,
            # The in-process worker sees its stop flag when a BRPOP returns: each 0.2 s
            # instead of each second (kombu takes polling_interval as the BRPOP timeout).
            "broker_transport_options": {"polling_interval": 0.2},
        }
    if name == "rabbitmq_postgres":
        require("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
        require("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
        _postgres_empty()
        return {
            **common,
            "broker_url": RABBITMQ_URL,
            "result_backend": f"db+{POSTGRES_URL}",
            # The in-process worker notices its stop flag only when its event loop wakes;
            # on AMQP that is at the next heartbeat check, 10 s or more by default.
            "broker_heartbeat": 2,
            # A schema of the tests' own, emptied around each test, as rq does with its Redis db.
            "database_table_schemas": {"task": TEST_SCHEMA, "group": TEST_SCHEMA},
        }
    if name == "embedded":
        from ergate_celery.embedded_broker import embedded_broker_settings

        return {
            **common,
            **embedded_broker_settings(tmp_path / "broker"),
            "result_backend": f"db+sqlite:///{tmp_path / 'results.sqlite'}",
        }
    if name == "django_db":
        require("Redis", REDIS_HOST, REDIS_PORT)
        configure_django(tmp_path)  # once per process: later calls keep the first database
        redis_flush()
        _django_empty()
        return {**common, "broker_url": REDIS_URL, "result_backend": "django-db"}
    raise ValueError(name)


def _django_empty() -> None:
    from django_celery_results.models import TaskResult

    from ergate_celery.contrib.django.models import JobIndexEntry

    TaskResult.objects.all().delete()
    JobIndexEntry.objects.all().delete()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test using `setup` once per setup; `@pytest.mark.setup("redis")` narrows it."""
    if "setup_name" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("setup")
        names = list(marker.args) if marker is not None else list(SETUPS)
        metafunc.parametrize("setup_name", names)


@pytest.fixture
def make_setup(tmp_path: Path) -> Iterator[Callable[[str], Setup]]:
    """Build a fresh app and ErgateCelery on a named setup (cleaned up afterwards)."""
    made: list[Setup] = []

    def make(name: str, **extra: Any) -> Setup:
        conf = {**_conf(name, tmp_path), **extra}
        app = Celery(f"test_{name}", set_as_current=True)
        app.conf.update(conf)
        setup = Setup(name, app, ErgateCelery(app), conf, tmp_path)
        made.append(setup)
        return setup

    yield make
    for setup in made:
        cleanup_setup(setup.name, setup.app)


def cleanup_setup(name: str, app: Celery) -> None:
    """Leave nothing of a test behind in the shared services."""
    if name == "redis":
        redis_flush()
    elif name == "rabbitmq_postgres":
        _delete_queues(app)
        _postgres_empty()
    elif name == "django_db":
        _django_empty()
        redis_flush()
    app.close()


def _delete_queues(app: Celery) -> None:
    # Each test publishes to queues of its own; leave none behind in the shared RabbitMQ.
    default = app.conf.task_default_queue
    with app.connection_for_write() as conn:
        for queue in (default, f"{default}-special"):
            conn.default_channel.queue_delete(queue)


@pytest.fixture
def setup(setup_name: str, make_setup: Callable[[str], Setup]) -> Setup:
    """A fresh app on each setup in turn."""
    return make_setup(setup_name)


@pytest.fixture
def worker(setup: Setup) -> Callable[[], Any]:
    """Start an in-process worker (2 threads) for `setup.app` once the test registered its
    workflows: `with worker(): ...`."""

    return lambda: in_process_worker(setup.app)


@contextmanager
def in_process_worker(app: Celery, **options: Any) -> Iterator[Any]:
    """A real worker consuming in this process on 2 threads."""
    settings = {
        "pool": "threads",
        "concurrency": 2,
        "perform_ping_check": False,
        "shutdown_timeout": 30,
        "loglevel": "WARNING",
        **options,
    }
    with start_worker(app, **settings) as worker:
        yield worker
        # start_worker stops with a cold shutdown, which leaves a running step behind; finish
        # the steps under way first, as a warm shutdown would (what follows a step's final
        # write, its signals, would otherwise run after the test moved on).
        deadline = time.monotonic() + settings["shutdown_timeout"]
        while worker_state.active_requests and time.monotonic() < deadline:
            time.sleep(0.01)
