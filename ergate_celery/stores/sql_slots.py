"""The concurrency slots documents of the SQL stores: one row per workflow key, each change
one conditional statement (see `stores/flow.py` for what is written)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ergate_celery.stores.sql_statements import reading


def slots_table(metadata: sa.MetaData) -> sa.Table:
    """The slots table, beside the store's other tables on `metadata`."""
    return sa.Table(
        "ergate_concurrency_slots",
        metadata,
        sa.Column("name", sa.String(500), primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
    )


def read_slots(engine: sa.Engine, table: sa.Table, name: str) -> str | None:
    """The document `name`, or None."""
    query = sa.select(table.c.document).where(table.c.name == name)
    found = reading(engine, lambda conn: conn.execute(query).scalar())
    return None if found is None else str(found)


def swap_slots(
    engine: sa.Engine, table: sa.Table, name: str, expected: str | bytes | None, new: str | None
) -> bool:
    """Write `new` (None: delete) where the document is still `expected` (None: absent)."""
    column = table.c
    old = expected.decode() if isinstance(expected, bytes) else expected
    with engine.connect() as conn:
        if old is None:
            if new is None:
                return True
            try:
                conn.execute(sa.insert(table).values(name=name, document=new))
            except IntegrityError:
                return False
            return True
        match = (column.name == name) & (column.document == old)
        if new is None:
            changed = conn.execute(sa.delete(table).where(match))
        else:
            changed = conn.execute(sa.update(table).where(match).values(document=new))
        return changed.rowcount == 1
