"""SQLite results shared by several processes: write-ahead log, no disk sync per commit, a
long wait for another writer; for the job store's engine and for Celery's own."""

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from ergate_celery.embedded import folder_watch
from ergate_celery.stores import sqlite_store

from .support import Setup, watch_waits
from .workflows import echo_workflow


def _pragmas(connection: Any) -> tuple[str, int, int]:
    def one(name: str) -> Any:
        return connection.exec_driver_sql(f"PRAGMA {name}").scalar()

    return one("journal_mode"), one("synchronous"), one("busy_timeout")


@pytest.mark.setup("embedded")
def test_the_job_store_and_celery_write_sqlite_through_the_write_ahead_log(setup: Setup) -> None:
    store: Any = setup.ergate.store
    with store.engine.connect() as connection:
        from_store = _pragmas(connection)
    session = setup.app.backend.ResultSession()
    try:
        from_celery = _pragmas(session.connection())
    finally:
        session.close()
    # synchronous 1 is NORMAL (2, FULL, is SQLite's default).
    assert from_store == ("wal", 1, 30_000)
    assert from_celery == ("wal", 1, 30_000)


def test_an_engine_of_its_own_is_left_alone(tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'other.sqlite'}")
    try:
        with engine.connect() as connection:
            assert _pragmas(connection)[:2] == ("delete", 2)
    finally:
        engine.dispose()


@pytest.mark.setup("embedded")
def test_a_waiter_wakes_on_the_commit_that_ends_its_job(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its reads are an hour apart: only the commit, seen through inotify, can end the wait
    before the join below gives up."""
    if folder_watch.watch_folder(str(setup.tmp_path), "x") is None:
        pytest.skip("needs Linux's inotify")
    monkeypatch.setattr(sqlite_store, "WATCHED_POLL", 3600.0)
    waiting = watch_waits(monkeypatch)
    ergate = setup.ergate
    ergate.register_workflow(echo_workflow("waited"))
    job = ergate.submit_job("waited")  # no worker: it stays QUEUED until cancelled below
    ended: list[Any] = []
    waiter = threading.Thread(
        target=lambda: ended.append(ergate.wait_for_job(str(job.id), timeout=3600)), daemon=True
    )
    waiter.start()
    assert waiting.wait(60), "the waiter never started waiting"
    ergate.cancel_job(str(job.id))
    waiter.join(60)
    assert [done.status.name for done in ended] == ["CANCELLED"]
