"""SQLite as several processes (workers, beat, a web server) share it through SQLAlchemy."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

__all__ = ["share_backend_between_processes", "share_between_processes"]


def share_between_processes(engine: sa.Engine) -> None:
    """Set each new connection of `engine` up for writers in several processes.

    Write-ahead logging lets readers go on while one process writes, and a commit no longer
    syncs the rollback journal and the database file to disk (several ms each); with
    `synchronous=NORMAL` a commit survives the crash of any process but not of the machine
    (power loss, kernel panic), which may lose the last commits before the next checkpoint.
    The journal mode is kept in the database file, so every process gets it once one set it.
    A writer waits up to 30 s for another's write to end.
    """
    sa.event.listen(engine, "connect", _set_up)


def share_backend_between_processes(backend: Any) -> None:
    """Set the engines that Celery's SQLAlchemy `backend` makes (the step summaries it writes)
    up as `share_between_processes` does, unless `database_engine_callback` is set."""
    manager = getattr(backend, "session_manager", None)
    if manager is not None and getattr(manager, "engine_callback", None) is None:
        manager.engine_callback = share_between_processes


def _set_up(connection: Any, record: Any) -> None:
    cursor = connection.cursor()
    try:
        # Wait for another process's write to end rather than fail (Python's default is 5 s).
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
