"""The real services the tests use, each in a namespace of this pytest run's own.

Two runs on one machine never see each other's data: a run takes a Redis database no one
else uses, and a PostgreSQL schema and a RabbitMQ vhost named after its run id, and removes
them when it ends. A run that died without cleaning up is recognised by its run lock, a file
lock the kernel releases with the process, and what it left is removed by the next run.

An absent service skips the tests that need it, or fails them under ERGATE_REQUIRE_SERVICES.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432

S = TypeVar("S", bound="Service")

#: Names this run's namespaces after it: schema ergate_test_<id>, vhost ergate-test-<id>.
RUN_ID = uuid.uuid4().hex[:8]
#: The run locks, and the locks on the Redis databases runs took.
LOCKS = Path(tempfile.gettempdir()) / "ergate-tests"
#: What this run's namespaces are, and warnings about them, for the end of the run's report.
NOTES: list[str] = []

START_HINTS = {
    "Redis": "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''",
    "RabbitMQ": "rabbitmq-server -detached",
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
}


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


class Service(Protocol):
    """What the service fixtures do with a service: claim a namespace, release it."""

    @classmethod
    def claim(cls) -> Self: ...

    def release(self) -> None: ...


def claimed(kind: type[S]) -> Iterator[S]:
    """A namespace of `kind` for as long as the generator runs (a fixture's body)."""
    service = kind.claim()
    yield service
    service.release()


# Run locks ----------------------------------------------------------------------------------


def _lock(path: Path) -> int | None:
    """An exclusive lock on `path` as an open descriptor, or None if another process holds it."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


_run_lock: int | None = None


def hold_run_lock() -> None:
    """Mark this run alive for as long as its process lives."""
    global _run_lock
    if _run_lock is None:
        _run_lock = _lock(LOCKS / f"run-{RUN_ID}.lock")


def release_run_lock() -> None:
    """This run is over: remove its run lock."""
    global _run_lock
    if _run_lock is not None:
        (LOCKS / f"run-{RUN_ID}.lock").unlink(missing_ok=True)
        os.close(_run_lock)
        _run_lock = None


def run_alive(run_id: str) -> bool:
    """Whether the run `run_id` is still going (its process holds its run lock)."""
    path = LOCKS / f"run-{run_id}.lock"
    if run_id == RUN_ID:
        return True
    if not path.exists():
        return False
    fd = _lock(path)
    if fd is None:
        return True
    path.unlink(missing_ok=True)
    os.close(fd)
    return False


def _dead_runs(names: list[str], pattern: str) -> list[str]:
    """The names, among `names`, that `pattern` (with a run id group) gives to a dead run."""
    found = (re.fullmatch(pattern, name) for name in names)
    return [match.group(0) for match in found if match and not run_alive(match.group(1))]


# Redis --------------------------------------------------------------------------------------

#: A key every database a run took holds, naming that run: what marks a dead run's leftovers.
REDIS_OWNER_KEY = "ergate-tests:run"
#: Databases a run never takes: 0 (everyone's default), 12 (bench/), 13 (the tests' own
#: before runs had one each, still used by older checkouts).
REDIS_RESERVED_DBS = frozenset({0, 12, 13})


@dataclass
class RedisService:
    """A Redis database of this run's own, locked for it, flushed around each test."""

    db: int
    url: str
    lock: int

    @classmethod
    def claim(cls) -> RedisService:
        """Take the first database no one uses: unlocked, and empty or left by a dead run.

        ERGATE_TEST_REDIS_DB names the database instead (whatever it holds is flushed).
        """
        import redis

        require("Redis", REDIS_HOST, REDIS_PORT)
        hold_run_lock()
        chosen = os.environ.get("ERGATE_TEST_REDIS_DB")
        candidates = [int(chosen)] if chosen else _redis_candidates()
        for db in candidates:
            lock = _lock(LOCKS / f"redis-{REDIS_PORT}-db{db}.lock")
            if lock is None:
                continue
            client = redis.Redis(REDIS_HOST, REDIS_PORT, db)
            # The database is locked for this run now: a marked one was a dead run's.
            if chosen or client.dbsize() == 0 or client.exists(REDIS_OWNER_KEY):
                service = cls(db, f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}", lock)
                service.flush()
                NOTES.append(f"Redis: database {db} ({service.url})")
                return service
            os.close(lock)
        what = f"database {chosen} is" if chosen else "no database is free (all locked or in use)"
        pytest.fail(
            f"Redis {what}; let another test run end, or choose one with ERGATE_TEST_REDIS_DB"
        )

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    def flush(self) -> None:
        """Empty the database, keeping it marked as this run's."""
        with self.client().pipeline(transaction=True) as pipe:
            pipe.flushdb()
            pipe.set(REDIS_OWNER_KEY, RUN_ID)
            pipe.execute()

    def release(self) -> None:
        self.client().flushdb()
        os.close(self.lock)


def _redis_candidates() -> list[int]:
    import redis

    try:
        count = int(redis.Redis(REDIS_HOST, REDIS_PORT).config_get("databases")["databases"])
    except redis.RedisError:  # CONFIG may be renamed away: Redis's default count
        count = 16
    return [db for db in range(count - 1, 0, -1) if db not in REDIS_RESERVED_DBS]


# PostgreSQL ---------------------------------------------------------------------------------

POSTGRES_SERVER = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}"


@dataclass
class PostgresService:
    """A schema of this run's own in the database `test`, emptied around each test."""

    url: str
    schema: str

    @classmethod
    def claim(cls) -> PostgresService:
        """Schema ergate_test_<run id>, or the one ERGATE_TEST_SCHEMA names."""
        require("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
        hold_run_lock()
        service = cls(f"{POSTGRES_SERVER}/test", os.environ.get("ERGATE_TEST_SCHEMA", ""))
        service.schema = service.schema or f"ergate_test_{RUN_ID}"
        service._drop_dead_runs()
        service.empty()
        NOTES.append(f"PostgreSQL: schema {service.schema} of {service.url}")
        return service

    @property
    def own_database_url(self) -> str:
        """A URL naming a database of this run's own, not created: for Django's test runner,
        which creates and drops test_<name> itself."""
        return f"{POSTGRES_SERVER}/{self.schema}"

    def _execute(self, *statements: str, autocommit: bool = False) -> None:
        import sqlalchemy as sa

        options = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
        engine = sa.create_engine(self.url, **options)
        try:
            with engine.begin() as conn:
                for statement in statements:
                    conn.execute(sa.text(statement))
        finally:
            engine.dispose()

    def _names(self, query: str) -> list[str]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                return [str(name) for name in conn.execute(sa.text(query)).scalars()]
        finally:
            engine.dispose()

    def empty(self) -> None:
        self._execute(
            f"DROP SCHEMA IF EXISTS {self.schema} CASCADE", f"CREATE SCHEMA {self.schema}"
        )

    def release(self) -> None:
        """Drop this run's schema."""
        self._execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    def _drop_dead_runs(self) -> None:
        schemas = self._names("SELECT nspname FROM pg_namespace")
        for schema in _dead_runs(schemas, r"ergate_test_([0-9a-f]{8})"):
            self._execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        databases = self._names("SELECT datname FROM pg_database")
        for database in _dead_runs(databases, r"test_ergate_test_([0-9a-f]{8})"):
            self._execute(f"DROP DATABASE IF EXISTS {database}", autocommit=True)


# RabbitMQ -----------------------------------------------------------------------------------


@dataclass
class RabbitMQService:
    """A vhost of this run's own (created with rabbitmqctl), or `/` when it cannot make one."""

    url: str
    vhost: str

    @classmethod
    def claim(cls) -> RabbitMQService:
        require("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
        hold_run_lock()
        vhost = f"ergate-test-{RUN_ID}"
        try:
            _drop_dead_vhosts()
            _rabbitmqctl("add_vhost", vhost)
            _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or error
            NOTES.append(
                f"WARNING: RabbitMQ: no vhost of this run's own ({detail}); the tests share "
                "vhost / with every other run on this machine"
            )
            vhost = ""
        url = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"
        NOTES.append(f"RabbitMQ: vhost {vhost or '/'} ({url})")
        return cls(url, vhost or "/")

    def release(self) -> None:
        if self.vhost != "/":
            _rabbitmqctl("delete_vhost", self.vhost)


def _rabbitmqctl(*args: str) -> str:
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        raise FileNotFoundError("rabbitmqctl is not installed")
    done = subprocess.run(
        [binary, "-q", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def _drop_dead_vhosts() -> None:
    vhosts = _rabbitmqctl("list_vhosts", "name").split()
    for vhost in _dead_runs(vhosts, r"ergate-test-([0-9a-f]{8})"):
        _rabbitmqctl("delete_vhost", vhost)
