"""What a store's engine sends on PostgreSQL, recorded at psycopg's cursor: the statements the
store sends on the driver's own cursor count with those sent through SQLAlchemy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import Binary


@dataclass
class Sent:
    """Each statement's text, its bytes parameters, and its first row as received (read from
    psycopg's result, not consumed)."""

    statements: list[str] = field(default_factory=list)
    parameters: list[list[bytes]] = field(default_factory=list)
    received: list[list[bytes | None]] = field(default_factory=list)

    def clear(self) -> None:
        self.statements.clear()
        self.parameters.clear()
        self.received.clear()


@contextmanager
def recorded(engine: sa.Engine) -> Iterator[Sent]:
    """Record what `engine`'s connections send while the block runs."""
    sent = Sent()

    class Recording(psycopg.Cursor[Any]):
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            values = params.values() if isinstance(params, dict) else params or ()
            sent.statements.append(str(query))
            sent.parameters.append(
                [bytes(getattr(v, "obj", v)) for v in values if isinstance(v, bytes | Binary)]
            )
            executed = super().execute(query, params, **kwargs)
            result = self.pgresult
            row: list[bytes | None] = []
            if result is not None and result.ntuples:
                row = [result.get_value(0, n) for n in range(result.nfields)]
            sent.received.append(row)
            return executed

    def checked_out(dbapi_connection: Any, *args: Any) -> None:
        dbapi_connection.cursor_factory = Recording

    def checked_in(dbapi_connection: Any, *args: Any) -> None:
        dbapi_connection.cursor_factory = psycopg.Cursor

    sa.event.listen(engine, "checkout", checked_out)
    sa.event.listen(engine, "checkin", checked_in)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "checkout", checked_out)
        sa.event.remove(engine, "checkin", checked_in)
