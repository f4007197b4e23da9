"""The step's statements sent on the driver's own cursor, the connection still the engine's.

A step runs two statements (its claim and its outcome), each a single statement in autocommit
whose SQL text is built once. Sent through a SQLAlchemy `Connection`, each also pays for the
connection's construction, its events and its result objects: about as much CPU as the
driver's own work. Here the connection is checked out of the engine's pool (its checkout
events, its URL and options, its size all apply) and the statement goes to the driver's cursor.
What SQLAlchemy would do on an error is kept: a connection the server closed is invalidated,
so the pool replaces it, and the error is raised as SQLAlchemy's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

logger = logging.getLogger(__name__)


@contextmanager
def driver_cursor(engine: sa.Engine) -> Iterator[Any]:
    """A cursor of a connection of `engine`'s pool, in autocommit: each statement commits."""
    pooled = engine.raw_connection()
    dbapi = engine.dialect.loaded_dbapi
    try:
        connection = pooled.driver_connection
        assert connection is not None
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                yield cursor
        finally:
            # As the pool hands connections out: a later user begins its own transactions.
            connection.autocommit = False
    except dbapi.Error as exc:
        gone = engine.dialect.is_disconnect(exc, pooled.dbapi_connection, None)
        if gone:
            logger.debug("A pooled connection is gone (%r): it is replaced", exc)
            pooled.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            None, None, exc, dbapi.Error, connection_invalidated=gone, dialect=engine.dialect
        ) from exc
    finally:
        pooled.close()


def fetched(cursor: Any) -> dict[str, Any] | None:
    """The cursor's first row by column name, or None."""
    row = cursor.fetchone()
    if row is None:
        return None
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}
