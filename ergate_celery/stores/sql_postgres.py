"""PostgreSQL: each write of a job is one statement, sent in one round trip.

A job's change touches its row, its job index entry, its listing row and the step's summary
row. On PostgreSQL these go into one statement of data-modifying CTEs, run in autocommit:
a single statement is its own transaction, so it is as atomic as BEGIN … COMMIT and costs
one round trip instead of five to seven (BEGIN, each statement, COMMIT). Every part after
the compare-and-set selects from its RETURNING, so nothing else is written when it misses.
A submission that parks its job when its workflow is paused reads the paused table in the
same statement: a pause committed before it is seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import sqlalchemy as sa
from celery import states
from sqlalchemy.dialects import postgresql as pg

from ergate_celery.stores.sql_driver import fetched
from ergate_celery.stores.sql_listen import channel_of
from ergate_celery.stores.sql_statements import compare_and_set
from ergate_celery.stores.task_rows import create_parameters, write_parameters


def _param(name: str, column: sa.Column[Any]) -> Any:
    # Typed and cast: a bare parameter in a SELECT list would be typed `text` by PostgreSQL.
    return sa.cast(sa.bindparam(name, type_=column.type), column.type)


class Written(NamedTuple):
    """What a compare-and-set found: whether it wrote, and the row as it stood if it did not
    (by column name; None: no row)."""

    written: bool
    row: Any


class Compiled:
    """A statement compiled once for the connection's dialect and sent as its SQL text: an
    execution then skips SQLAlchemy's statement cache lookup and compiled-parameter work,
    which on a statement of several CTEs is most of SQLAlchemy's time per step."""

    def __init__(self, statement: Any, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.text: str = compiled.string
        #: The values of the statement's own literals (`sa.literal`, a compared constant).
        self.fixed = {name: value for name, value in compiled.params.items() if value is not None}
        self.processors = dict(compiled._bind_processors)

    def parameters(self, values: dict[str, Any]) -> dict[str, Any]:
        """The driver's parameters for `values` (by bind name), as `conn.execute` makes them."""
        params = {**self.fixed, **values}
        for name, process in self.processors.items():
            value = params.get(name)
            if value is not None:
                params[name] = process(value)
        return params

    def run(self, conn: sa.Connection, values: dict[str, Any]) -> sa.CursorResult[Any]:
        """Execute with `values` (by bind name), as `conn.execute` of the statement would."""
        return conn.exec_driver_sql(self.text, self.parameters(values))


class PostgresStatements:
    """The one-statement writes, built once per shape (index kept or dropped, listing status
    changed or not, summary or not) and reused, so SQLAlchemy's compiled cache serves them."""

    def __init__(
        self,
        table: sa.Table,
        index: sa.Table,
        listing: sa.Table,
        tags: sa.Table,
        paused: sa.Table,
        summary_columns: list[str],
    ) -> None:
        self.table, self.index, self.listing, self.tags = table, index, listing, tags
        self.paused = paused
        self.summary_columns = summary_columns
        self._shapes: dict[tuple[bool, bool, bool, bool], Compiled] = {}
        #: The channel a job's final write notifies (sql_listen.py).
        self.channel = channel_of(table.schema)
        self._inserts: dict[bool, Compiled] = {}

    def _index_upsert(self, source: Any, key: Any, *when: Any) -> Any:
        index = self.index
        rows = sa.select(key, _param("i_kind", index.c.kind), _param("i_at", index.c.at))
        statement = pg.insert(index).from_select(
            ["job_id", "kind", "at"], rows.select_from(source).where(*when)
        )
        return statement.on_conflict_do_update(
            index_elements=[index.c.job_id],
            set_={"kind": statement.excluded.kind, "at": statement.excluded.at},
        )

    def _shape(self, indexed: bool, relisted: bool, summarized: bool, final: bool) -> Any:
        table, column = self.table, self.table.c
        written = compare_and_set(table, by_digest=True).returning(column.task_id).cte("written")
        parts = []
        if indexed:
            parts.append(self._index_upsert(written, written.c.task_id).cte("indexed"))
        else:
            index = self.index
            unindexed = sa.delete(index).where(index.c.job_id.in_(sa.select(written.c.task_id)))
            parts.append(unindexed.cte("unindexed"))
        if relisted:
            listing = self.listing
            relist = (
                sa.update(listing)
                .where(listing.c.job_id.in_(sa.select(written.c.task_id)))
                .values(status=sa.bindparam("l_status"))
            )
            parts.append(relist.cte("relisted"))
        if summarized:
            names = ["task_id", *self.summary_columns]
            summary = pg.insert(table).from_select(
                names,
                sa.select(*[_param(f"s_{name}", column[name]) for name in names]).where(
                    sa.exists(sa.select(written.c.task_id))
                ),
            )
            summary = summary.on_conflict_do_update(
                index_elements=[column.task_id],
                set_={name: summary.excluded[name] for name in self.summary_columns},
                # As Celery: a result stays once SUCCESS is stored.
                where=column.status != states.SUCCESS,
            )
            parts.append(summary.cte("summarized"))
        found = table.alias("found")
        count = sa.select(sa.func.count()).select_from(written).scalar_subquery()
        columns = [count.label("written"), found.c.status, found.c.result]
        if final:
            # Sent when this statement commits, and only if it wrote: the job has ended.
            notified = sa.select(
                sa.func.pg_notify(sa.bindparam("n_channel", type_=sa.Text), written.c.task_id)
            ).cte("notified")
            # A SELECT in a WITH runs only if the statement reads it.
            told = sa.select(sa.func.count()).select_from(notified).scalar_subquery()
            columns.append(told.label("notified"))
        # The row as it stood before this statement, only when nothing was written: a write
        # that succeeds gets back one integer, not the record.
        return (
            sa.select(*columns)
            .select_from(sa.select(sa.literal(1).label("one")).subquery())
            .outerjoin(
                found,
                sa.and_(
                    found.c.task_id == sa.bindparam("b_task_id"),
                    ~sa.exists(sa.select(written.c.task_id)),
                ),
            )
            .add_cte(*parts)
        )

    def compare_and_set(
        self,
        cursor: Any,
        dialect: sa.Dialect,
        params: dict[str, Any],
        entry: tuple[str, Any] | None,
        relist: str | None,
        summary: dict[str, Any] | None,
        final: bool = False,
    ) -> Written:
        """Write the job (params: `b_task_id`, `b_status`, `b_digest` to compare and the new
        columns) with its index `entry` (kind, at) or none, its listing status `relist` when
        it changed, and the step's `summary` row, if its row still holds what is compared;
        a `final` write notifies the store's channel (its waiters) of the job's id."""
        key = (entry is not None, relist is not None, summary is not None, final)
        statement = self._shapes.get(key)
        if statement is None:
            statement = self._shapes[key] = Compiled(self._shape(*key), dialect)
        summarized = None
        if summary is not None:
            summarized = {f"s_{name}": value for name, value in summary.items()}
        values = write_parameters(params, entry, relist, summarized)
        if final:
            values["n_channel"] = self.channel
        # On the driver's cursor (sql_driver.py): one step's two statements are its hot path.
        cursor.execute(statement.text, statement.parameters(values))
        row = fetched(cursor)
        assert row is not None
        if row["written"] == 1:
            return Written(True, None)
        return Written(False, None if row["status"] is None else row)

    def _insert(self, unless_paused: bool) -> Any:
        table, listing, tags = self.table, self.listing, self.tags
        result: Any = sa.bindparam("result", type_=table.c.result.type)
        reported: Any = sa.false()
        if unless_paused:
            # Whether the workflow is paused, read once: it picks the document stored, and
            # the statement reports it.
            paused = sa.select(
                sa.exists()
                .where(self.paused.c.workflow == sa.bindparam("p_workflow"))
                .label("is_paused")
            ).cte("paused")
            reported = sa.select(paused.c.is_paused).scalar_subquery()
            parked = sa.bindparam("p_result", type_=table.c.result.type)
            result = sa.case((reported, parked), else_=result)
        created = (
            sa.insert(table)
            .values(
                task_id=sa.bindparam("task_id"),
                status=sa.bindparam("status"),
                result=result,
                traceback=sa.bindparam("traceback"),
                date_done=sa.bindparam("date_done"),
            )
            .returning(table.c.task_id)
            .cte("created")
        )
        indexed = self._index_upsert(
            created, created.c.task_id, sa.bindparam("i_kind", type_=sa.String) != sa.null()
        )
        listed = listing.insert().from_select(
            ["job_id", "workflow", "status", "submitted_at"],
            sa.select(
                created.c.task_id,
                _param("l_workflow", listing.c.workflow),
                _param("l_status", listing.c.status),
                _param("l_submitted_at", listing.c.submitted_at),
            ).where(sa.bindparam("l_submitted_at", type_=sa.DateTime) != sa.null()),
        )
        pairs = (
            sa.func.unnest(
                sa.bindparam("t_keys", type_=pg.ARRAY(sa.String)),
                sa.bindparam("t_values", type_=pg.ARRAY(sa.String)),
            )
            .table_valued("key", "value")
            .render_derived(name="pairs")
        )
        tagged = tags.insert().from_select(
            ["key", "value", "job_id"],
            sa.select(pairs.c.key, pairs.c.value, created.c.task_id).select_from(
                created.join(pairs, sa.true())
            ),
        )
        count = sa.select(sa.func.count()).select_from(created).scalar_subquery()
        return sa.select(count, reported.label("parked")).add_cte(
            indexed.cte("indexed"), listed.cte("listed"), tagged.cte("tagged")
        )

    def create(
        self,
        conn: sa.Connection,
        values: Mapping[str, Any],
        entry: tuple[str, Any] | None,
        listed: tuple[str, str, Any] | None,
        tags: Mapping[str, str],
        parked: tuple[str, bytes] | None = None,
    ) -> bool:
        """Insert a job row with its index entry, listing row and tags in one statement;
        IntegrityError when the id is taken (and nothing is written). With `parked` (the
        job's workflow, and its parked document), the parked document is stored if that
        workflow is paused; whether it was."""
        params = create_parameters(values, entry, listed, tags)
        if parked is not None:
            params["p_workflow"], params["p_result"] = parked
        statement = self._inserts.get(parked is not None)
        if statement is None:
            statement = Compiled(self._insert(parked is not None), conn.dialect)
            self._inserts[parked is not None] = statement
        row = statement.run(conn, params).one()
        return bool(row.parked)
