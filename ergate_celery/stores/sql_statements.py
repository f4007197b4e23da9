"""The statements the SQLAlchemy store runs on every step, built once per store.

A step writes its job row, its job index entry and its own task result (the step summary) in
one transaction. On PostgreSQL and SQLite the index entry and the summary are upserts
(`INSERT … ON CONFLICT DO UPDATE`), so each is one statement; other databases fall back to a
DELETE + INSERT for the index and to Celery's `store_result` for the summary.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from celery import states
from kombu.utils.encoding import ensure_bytes

from ergate_celery.stores.base import TaskResult

T = TypeVar("T")

#: Columns of Celery's task table the summary row never sets (as Celery's own write).
_NOT_SET = frozenset({"id", "task_id", "children", "stamps"})


def upsert_for(url: Any) -> Callable[[sa.Table], Any] | None:
    """The dialect's `insert` with `on_conflict_do_update`, or None where there is none."""
    backend = sa.engine.make_url(str(url)).get_backend_name()
    if backend == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    if backend == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    return None


def compare_and_set(table: sa.Table, *, by_digest: bool = False) -> sa.Update:
    """The job row's compare-and-set: the new columns, only where the row still holds the
    status and result read (`b_status`, and `b_result`; or, `by_digest`, the SHA-256 of the
    result `b_digest`, so that the record is not sent twice: PostgreSQL)."""
    column = table.c
    same: Any = column.result == sa.bindparam("b_result")
    if by_digest:
        same = sa.func.sha256(column.result) == sa.bindparam("b_digest", type_=sa.LargeBinary)
    return (
        sa.update(table)
        .where(
            column.task_id == sa.bindparam("b_task_id"),
            column.status == sa.bindparam("b_status"),
            same,
        )
        .values(
            status=sa.bindparam("status"),
            result=sa.bindparam("result"),
            traceback=sa.bindparam("traceback"),
            date_done=sa.bindparam("date_done"),
        )
    )


def digest_of(raw: bytes) -> bytes:
    """The SHA-256 of a stored record, as PostgreSQL's `sha256()` computes it."""
    return hashlib.sha256(raw).digest()


class Statements:
    """Prebuilt statements (bound by name), so SQLAlchemy builds and compiles each once."""

    def __init__(self, table: sa.Table, index: sa.Table, listing: sa.Table, url: Any) -> None:
        column = table.c
        self.table = table
        self.compare_and_set = compare_and_set(table)
        self.select = sa.select(column.status, column.result).where(
            column.task_id == sa.bindparam("b_task_id")
        )
        self.relist = (
            sa.update(listing)
            .where(listing.c.job_id == sa.bindparam("b_job_id"))
            .values(status=sa.bindparam("status"))
        )
        self.unindex = sa.delete(index).where(index.c.job_id == sa.bindparam("b_job_id"))
        self.index_insert = sa.insert(index)
        upsert = upsert_for(url)
        self.index_upsert: Any = None
        self.summary_upsert: Any = None
        self.summary_columns: list[str] = []
        if upsert is not None:
            statement = upsert(index)
            self.index_upsert = statement.on_conflict_do_update(
                index_elements=[index.c.job_id],
                set_={"kind": statement.excluded.kind, "at": statement.excluded.at},
            )
            self.summary_columns = [c.name for c in table.columns if c.name not in _NOT_SET]
            if "children" in column:
                self.summary_columns.append("children")
            statement = upsert(table)
            # Celery ignores a write after a SUCCESS is stored (a repeated run of the task
            # must not replace its result): so does this one.
            self.summary_upsert = statement.on_conflict_do_update(
                index_elements=[column.task_id],
                set_={name: statement.excluded[name] for name in self.summary_columns},
                where=column.status != states.SUCCESS,
            )

    @property
    def writes_summaries(self) -> bool:
        """Whether a step summary is written in the job's transaction (with an upsert)."""
        return self.summary_upsert is not None

    def reindex(self, conn: sa.Connection, job_id: str, kind: str | None, at: Any) -> None:
        """Set the job's index entry to (`kind`, `at`), or remove it when `kind` is None."""
        if kind is None:
            conn.execute(self.unindex, {"b_job_id": job_id})
        elif self.index_upsert is not None:
            conn.execute(self.index_upsert, {"job_id": job_id, "kind": kind, "at": at})
        else:
            conn.execute(self.unindex, {"b_job_id": job_id})
            conn.execute(self.index_insert, {"job_id": job_id, "kind": kind, "at": at})

    def summary_values(self, backend: Any, result: TaskResult, job: Any) -> dict[str, Any]:
        """The columns of the step's summary row, as Celery's database backend would store
        the task's SUCCESS (`result_extended` ones included)."""
        meta = backend._get_result_meta(
            result=ensure_bytes(backend.encode(result.summarize(job))),
            state=states.SUCCESS,
            traceback=None,
            request=result.request,
            format_date=False,
            encode=True,
        )
        values = {name: meta.get(name) for name in self.summary_columns}
        if "children" in values:
            children = meta.get("children")
            values["children"] = ensure_bytes(backend.encode(children)) if children else None
        return {"task_id": result.task_id, **values}

    def store_summary(
        self, conn: sa.Connection, backend: Any, result: TaskResult, job: Any
    ) -> None:
        """Write the step's summary in `conn`'s transaction (see `summary_values`)."""
        conn.execute(self.summary_upsert, self.summary_values(backend, result, job))


#: A pooled connection idle for longer than this is pinged before use (see `engine_for`).
IDLE_PING_AFTER = 2.0


def engine_for(backend: Any) -> sa.Engine:
    """An engine on the backend's database with the backend's options, except Celery's
    default `pool_pre_ping`: a ping is a round trip before every transaction. Instead a
    connection is pinged when it has been idle for `IDLE_PING_AFTER` s (when a database restart
    may have closed it); one that breaks while in steady use fails its statement, invalidates
    the pool, and the caller's retry gets a new connection."""
    options = dict(backend.engine_options)
    options["pool_pre_ping"] = False
    if str(backend.url).startswith("sqlite"):
        options.setdefault("connect_args", {"timeout": 30})
    engine = sa.create_engine(backend.url, **options)

    @sa.event.listens_for(engine, "checkin")
    def checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["ergate_idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("ergate_idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_AFTER:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool then discards this connection and checks out another.
            raise sa.exc.DisconnectionError(f"A pooled connection is gone ({exc})") from exc

    return engine


def reading(engine: sa.Engine, read: Callable[[sa.Connection], T]) -> T:
    """`read` on a pooled connection, sent once more on a new one if the server had closed
    that one (a restart, `pg_terminate_backend`): without `pool_pre_ping` a closed connection
    fails its first statement, and a read is safe to repeat."""
    try:
        with engine.connect() as conn:
            return read(conn)
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    with engine.connect() as conn:
        return read(conn)
