"""SQLite results shared by several processes: write-ahead log, no disk sync per commit, a
long wait for another writer; for the job store's engine and for Celery's own."""

from typing import Any

import pytest
import sqlalchemy as sa

from tests.support import Setup


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
