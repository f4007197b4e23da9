"""Job records in the SQLAlchemy result backend's `celery_taskmeta` table."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ..job import Job
from .base import (
    BaseJobStore,
    IndexEntry,
    Outcome,
    Stored,
    TaskResult,
    check_size,
    expiring,
    index_entry,
    job_document,
    job_from_document,
)

#: The compare-and-set token: the row's status and result columns as read.
Columns = tuple[str, bytes]


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def index_table(schema: str | None) -> sa.Table:
    """The job index (scheduled by due time, active by last change), beside Celery's table."""
    metadata = sa.MetaData(schema=schema)
    table = sa.Table(
        "ergate_job_index",
        metadata,
        sa.Column("job_id", sa.String(155), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    sa.Index("ergate_job_index_kind_at", table.c.kind, table.c.at)
    return table


class SQLAlchemyJobStore(BaseJobStore[Columns]):
    """One row per job in Celery's task table; changes are conditional UPDATEs."""

    def __init__(self, backend: Any, max_bytes: int) -> None:
        super().__init__(backend, max_bytes)
        self.table: sa.Table = backend.task_cls.__table__
        self.index = index_table(self.table.schema)
        self._engine: sa.Engine | None = None
        self._engine_pid = 0

    @property
    def engine(self) -> sa.Engine:
        # One pooled engine per process: a pool must not cross a fork into prefork children.
        if self._engine is None or self._engine_pid != os.getpid():
            options = dict(self.backend.engine_options)
            if str(self.backend.url).startswith("sqlite"):
                options.setdefault("connect_args", {"timeout": 30})
            engine = sa.create_engine(self.backend.url, **options)
            self.table.metadata.create_all(engine, tables=[self.table])
            self.index.metadata.create_all(engine)
            self._engine, self._engine_pid = engine, os.getpid()
        return self._engine

    def close(self) -> None:
        """Dispose of this process's engine and its pooled connections."""
        if self._engine is not None and self._engine_pid == os.getpid():
            self._engine.dispose()
        self._engine = None

    def _encoded(self, job: Job) -> bytes:
        encoded = self.backend.encode(job_document(job))
        if isinstance(encoded, str):  # the JSON serializer gives text; the column is binary
            encoded = encoded.encode()
        return encoded  # type: ignore[no-any-return]

    def _values(self, job: Job, limit: int | None = None) -> dict[str, Any]:
        encoded = self._encoded(job)
        check_size(job, encoded, limit or self.max_bytes)
        return {
            "status": job.status.name,
            "result": encoded,
            "traceback": job.error.traceback if job.error else None,
            # Celery's backend_cleanup leaves rows without date_done alone: that is how a
            # job that must not expire is kept.
            "date_done": _naive_utc(datetime.now(UTC)) if expiring(job) else None,
        }

    def _reindex(self, conn: sa.Connection, job: Job) -> None:
        job_id = str(job.id)
        conn.execute(sa.delete(self.index).where(self.index.c.job_id == job_id))
        entry = index_entry(job)
        if entry is not None:
            conn.execute(
                sa.insert(self.index).values(
                    job_id=job_id, kind=entry.kind, at=_naive_utc(entry.at)
                )
            )

    def _select(self, conn: sa.Connection, job_id: str) -> Stored[Columns] | None:
        column = self.table.c
        row = conn.execute(
            sa.select(column.status, column.result).where(column.task_id == job_id)
        ).first()
        if row is None or row.result is None:
            return None
        return Stored(job_from_document(self.backend.decode(row.result)), (row.status, row.result))

    def _read(self, job_id: str) -> Stored[Columns] | None:
        with self.engine.connect() as conn:
            return self._select(conn, job_id)

    def _token_of(self, job: Job) -> Columns:
        return job.status.name, self._encoded(job)

    def _compare_and_set(
        self, job_id: str, expected: Columns, new: Job, result: TaskResult | None
    ) -> Stored[Columns] | Outcome:
        column = self.table.c
        status, raw = expected
        with self.engine.begin() as conn:
            written = conn.execute(
                sa.update(self.table)
                .where(column.task_id == job_id, column.status == status, column.result == raw)
                .values(**self._values(new))
            )
            if written.rowcount != 1:
                # In the same transaction: the record that won, for the caller to retry on.
                return self._select(conn, job_id) or Outcome.GONE
            self._reindex(conn, new)
        return Outcome.WRITTEN

    def _insert(self, job: Job) -> bool:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.insert(self.table).values(
                        task_id=str(job.id), **self._values(job, self.create_limit)
                    )
                )
                self._reindex(conn, job)
        except IntegrityError:
            return False
        return True

    def delete(self, job_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(self.table).where(self.table.c.task_id == job_id))
            conn.execute(sa.delete(self.index).where(self.index.c.job_id == job_id))

    def index_entries(self, kind: str, until: datetime, limit: int) -> list[IndexEntry]:
        column = self.index.c
        query = (
            sa.select(column.job_id, column.at)
            .where(column.kind == kind, column.at <= _naive_utc(until))
            .order_by(column.at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [
                IndexEntry(kind, str(job_id), at.replace(tzinfo=UTC))
                for job_id, at in conn.execute(query)
            ]

    def drop_index_entry(self, entry: IndexEntry) -> bool:
        column = self.index.c
        with self.engine.begin() as conn:
            dropped = conn.execute(
                sa.delete(self.index).where(
                    column.job_id == entry.job_id,
                    column.kind == entry.kind,
                    column.at == _naive_utc(entry.at),
                )
            )
        return dropped.rowcount == 1
