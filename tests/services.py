"""Which real services are up: an absent one skips, or fails under ERGATE_REQUIRE_SERVICES."""

from __future__ import annotations

import os
import socket

import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432

#: Redis database used by the tests; flushed before and after each test that uses it.
#: ERGATE_TEST_REDIS_DB lets two runs on one machine keep apart.
REDIS_TEST_DB = int(os.environ.get("ERGATE_TEST_REDIS_DB", "13"))
#: The PostgreSQL schema of the tests (ERGATE_TEST_SCHEMA overrides it), emptied around each test.
TEST_SCHEMA = os.environ.get("ERGATE_TEST_SCHEMA", "ergate_test")
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_TEST_DB}"
RABBITMQ_URL = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}//"
POSTGRES_URL = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test"

START_HINTS = {
    "Redis": "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''",
    "RabbitMQ": "rabbitmq-server -detached",
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
}


def redis_flush() -> None:
    """Empty the tests' own Redis database."""
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def services_required() -> bool:
    return os.environ.get("ERGATE_REQUIRE_SERVICES", "") not in ("", "0")


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    """Skip the test when `name` is down, or fail it when services are required."""
    if reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}; start it with: {START_HINTS[name]}"
    if services_required():
        pytest.fail(f"ERGATE_REQUIRE_SERVICES is set and {message}")
    pytest.skip(message)
