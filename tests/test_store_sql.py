"""The SQLAlchemy store's own promises: each write of a job is one statement on PostgreSQL, a
step summary stays once SUCCESS (as Celery's own write), and a pooled connection that the
database closed while it sat idle is replaced, not handed to the caller."""

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from ergate_celery import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.stores import sql_listen, sql_statements
from ergate_celery.stores.base import TaskResult

from .pg_statements import recorded
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
    with recorded(store.engine) as sent:
        statements = sent.statements
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


@pytest.mark.setup("rabbitmq_postgres")
def test_a_write_on_a_connection_closed_since_its_last_use_fails_and_is_replaced(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step's writes go to the driver's cursor: a closed connection fails the write as
    # SQLAlchemy's error (an outage, tried again by the worker) and leaves the pool.
    job, pid = _closed_behind(setup, monkeypatch, ping_after=3600.0)
    store: Any = setup.ergate.store
    with pytest.raises(sa.exc.OperationalError) as failed:
        store.update(str(job.id), _bump, assume=job)
    assert failed.value.connection_invalidated
    assert store.update(str(job.id), _bump, assume=job).after.attempt == job.attempt + 1
    assert _backend_pid(store) != pid


@pytest.mark.setup("rabbitmq_postgres")
def test_a_write_sends_the_record_once_and_gets_it_back_only_on_a_miss(setup: Setup) -> None:
    store: Any = setup.ergate.store
    job = _job(setup)
    stored = store._encoded(job)
    with recorded(store.engine) as recording:
        sent, received = recording.parameters, recording.received
        written = store.update(str(job.id), _bump, assume=job).after
        # The new record goes out; the one compared against only as its digest.
        assert store._encoded(written) in sent[0]
        assert stored not in sent[0]
        # A write that succeeds gets one count back, not the record.
        assert received[0][0] == b"1"
        assert all(value is None for value in received[0][1:])
        recording.clear()
        # Against a record that changed since: the write misses and brings back the record
        # that won, and the change is computed again on it (one more statement, no read).
        again = store.update(str(job.id), _bump, assume=job).after
        assert again.attempt == written.attempt + 1
        assert len(received) == 2
        assert received[0][0] == b"0"
        encoded = store._encoded(written).hex().encode()
        assert any(value and encoded in value for value in received[0])
        assert received[1][0] == b"1"


@pytest.mark.setup("rabbitmq_postgres")
def test_reading_the_paused_workflows_keeps_the_prepared_statements(setup: Setup) -> None:
    store: Any = setup.ergate.store
    job = _job(setup)
    for _ in range(8):  # psycopg prepares a statement at its fifth execution
        job = store.update(str(job.id), _bump, assume=job).after
    assert store.engine.pool.checkedin() == 1  # the same connection throughout
    prepared = sa.text("SELECT count(*) FROM pg_prepared_statements")
    with store.autocommit.connect() as conn:
        assert conn.execute(prepared).scalar() > 0
    assert store.paused_workflows() == set()
    with store.autocommit.connect() as conn:
        # A read in a transaction would have ended in a ROLLBACK, which psycopg follows with
        # DEALLOCATE ALL: every step statement parsed and planned again.
        assert conn.execute(prepared).scalar() > 0


@pytest.mark.setup("rabbitmq_postgres", "embedded")
def test_many_jobs_are_created_in_one_statement_and_a_taken_id_is_left_alone(
    setup: Setup,
) -> None:
    store: Any = setup.ergate.store
    job = _job(setup)
    new = [
        job.model_copy(update={"id": f"{job.id}-child-{n}", "tags": {"child": str(n)}})
        for n in range(3)
    ]
    statements: list[str] = []
    sa.event.listen(
        store.engine, "before_cursor_execute", lambda _c, _k, s, *a: statements.append(s)
    )
    assert store.create_many([new[0], job, new[1], new[2]]) == [True, False, True, True]
    if setup.name == "rabbitmq_postgres":
        assert len(statements) == 1
    assert store.create_many([new[1]]) == [False]
    assert store.get_many([str(j.id) for j in new]) == new
    assert [j.id for j in setup.ergate.list_jobs(tags={"child": "1"}).jobs] == [new[1].id]


@pytest.mark.setup("rabbitmq_postgres")
def test_a_waiter_is_told_of_the_jobs_end_without_reading_it_again(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No read again unless told: only the final write's notification can end this wait.
    monkeypatch.setattr(sql_listen, "REREAD", 3600.0)
    store: Any = setup.ergate.store
    job = _job(setup)
    ended: list[Job] = []
    read = store.get

    def read_then_end(job_id: str) -> Job | None:
        # The job ends right after a read made while listening: the waiter has seen it
        # running, and is told of its end only by the notification.
        listening = store._listener.is_listening()
        stored = read(job_id)
        if listening and not ended:
            ended.append(store.update(job_id, _completed).after)
        return stored

    monkeypatch.setattr(store, "get", read_then_end)
    waited: list[Job | None] = []
    waiter = threading.Thread(
        target=lambda: waited.append(store.wait_final(str(job.id), None, 0.01)), daemon=True
    )
    waiter.start()
    waiter.join(60.0)  # a bound for the failure only: told, it ends at once
    assert len(ended) == 1
    assert waited == ended


def _completed(stored: Job) -> Job:
    return stored.model_copy(update={"status": JobStatus.COMPLETED})
