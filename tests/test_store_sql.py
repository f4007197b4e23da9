"""The SQLAlchemy store's own promises: each write of a job is one statement on PostgreSQL, a
step summary stays once SUCCESS (as Celery's own write), and a pooled connection that the
database closed while it sat idle is replaced, not handed to the caller."""

from typing import Any

import pytest
import sqlalchemy as sa

from ergate_celery import Job
from ergate_celery.stores import sql_statements
from ergate_celery.stores.base import TaskResult

from .support import Setup
from .workflows import echo_workflow


def _job(setup: Setup) -> Job:
    setup.ergate.register_workflow(echo_workflow("sql_stored"))
    return setup.ergate.submit_job("sql_stored", initial_input_value=1, tags={"team": "a"})


def _bump(stored: Job) -> Job | None:
    return stored.model_copy(update={"attempt": stored.attempt + 1})


@pytest.mark.setup("rabbitmq_postgres")
def test_each_write_and_read_is_one_statement_on_postgres(setup: Setup) -> None:
    store: Any = setup.ergate.store
    job = _job(setup)  # the engine exists from here on
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        second = setup.ergate.submit_job("sql_stored", initial_input_value=2, tags={"a": "b"})
        assert len(statements) == 1
        # A submission while its workflow is paused: parked in the same statement, and
        # stored as returned (a write that assumes it is one statement, not a miss and a retry).
        store.set_paused("sql_stored", True)
        statements.clear()
        parked = setup.ergate.submit_job("sql_stored", initial_input_value=3)
        assert len(statements) == 1
        assert parked.parked
        assert store.get(str(parked.id)) == parked
        store.set_paused("sql_stored", False)
        statements.clear()
        assert store.update(str(parked.id), _bump, assume=parked).after is not None
        assert len(statements) == 1
        statements.clear()
        result = TaskResult("ergate-step:sql-1", lambda written: {"attempt": written.attempt})
        written = store.update(str(job.id), _bump, assume=job, result=result).after
        assert len(statements) == 1
        statements.clear()
        assert store.get(str(job.id)) == written
        assert len(statements) == 1
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    assert setup.app.AsyncResult("ergate-step:sql-1").result == {"attempt": 1}
    assert [j.id for j in setup.ergate.list_jobs(tags={"a": "b"}).jobs] == [second.id]


@pytest.mark.setup("rabbitmq_postgres", "embedded")
def test_a_step_summary_stays_once_success_is_stored(setup: Setup) -> None:
    job = _job(setup)
    first = TaskResult("ergate-step:sql-2", lambda written: {"attempt": written.attempt})
    written = setup.ergate.store.update(str(job.id), _bump, assume=job, result=first).after
    again = TaskResult("ergate-step:sql-2", lambda written: {"again": written.attempt})
    setup.ergate.store.update(str(job.id), _bump, assume=written, result=again)
    stored = setup.app.AsyncResult("ergate-step:sql-2")
    assert (stored.state, stored.result) == ("SUCCESS", {"attempt": 1})
    assert setup.ergate.get_job(str(job.id)).attempt == 2


def _backend_pid(store: Any) -> int:
    """The server process of the store's pooled connection."""
    with store.engine.connect() as conn:
        pid: int = conn.connection.driver_connection.info.backend_pid
    return pid


def _closed_behind(setup: Setup, monkeypatch: pytest.MonkeyPatch, ping_after: float) -> Any:
    """Store a job, then have the server close the store's only pooled connection; the store
    pings a connection idle for `ping_after` s at checkout. The job, and the closed pid."""
    job = _job(setup)
    monkeypatch.setattr(sql_statements, "IDLE_PING_AFTER", ping_after)
    pid = _backend_pid(setup.ergate.store)
    admin = sa.create_engine(setup.ergate.store.backend.url, poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    finally:
        admin.dispose()
    return job, pid


@pytest.mark.setup("rabbitmq_postgres")
def test_a_pooled_connection_closed_while_idle_is_replaced(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, pid = _closed_behind(setup, monkeypatch, ping_after=0.0)
    # The ping at checkout finds the closed connection, and the pool connects anew.
    assert setup.ergate.get_job(str(job.id)).id == job.id
    assert _backend_pid(setup.ergate.store) != pid


@pytest.mark.setup("rabbitmq_postgres")
def test_a_read_on_a_connection_closed_since_its_last_use_is_sent_again(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No ping at checkout: the read's first statement meets the closed connection.
    job, pid = _closed_behind(setup, monkeypatch, ping_after=3600.0)
    store: Any = setup.ergate.store
    assert setup.ergate.get_job(str(job.id)).id == job.id
    assert store.paused_workflows() == set()
    assert setup.ergate.list_jobs().jobs[0].id == job.id
    assert _backend_pid(store) != pid
