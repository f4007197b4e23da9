"""Job records in the SQLAlchemy result backend's `celery_taskmeta` table."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ..exceptions import DuplicateJobError
from ..job import Job
from ..job_status import JobStatus
from .base import (
    ACTIVE,
    SCHEDULED,
    Change,
    TaskResult,
    check_size,
    index_entry,
    job_document,
    job_from_document,
    poll_until_final,
    stamped,
)


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _expiring(job: Job) -> bool:
    return job.is_final or job.status is JobStatus.PENDING


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


class SQLAlchemyJobStore:
    """One row per job in Celery's task table; changes are conditional UPDATEs."""

    def __init__(self, backend: Any, max_bytes: int) -> None:
        self.backend = backend
        self.max_bytes = max_bytes
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

    def _encoded(self, job: Job) -> bytes:
        encoded = self.backend.encode(job_document(job))
        if isinstance(encoded, str):  # the JSON serializer gives text; the column is binary
            encoded = encoded.encode()
        return encoded  # type: ignore[no-any-return]

    def _values(self, job: Job) -> dict[str, Any]:
        encoded = self._encoded(job)
        check_size(job, encoded, self.max_bytes)
        return {
            "status": job.status.name,
            "result": encoded,
            "traceback": job.error.traceback if job.error else None,
            # Celery's backend_cleanup leaves rows without date_done alone: unfinished jobs
            # keep it NULL so that they never expire.
            "date_done": _naive_utc(datetime.now(UTC)) if _expiring(job) else None,
        }

    def _reindex(self, conn: sa.Connection, job: Job) -> None:
        job_id = str(job.id)
        conn.execute(sa.delete(self.index).where(self.index.c.job_id == job_id))
        entry = index_entry(job)
        if entry is not None:
            kind, at = entry
            conn.execute(sa.insert(self.index).values(job_id=job_id, kind=kind, at=_naive_utc(at)))

    def _decode(self, raw: bytes) -> Job:
        return job_from_document(self.backend.decode(raw))

    def create(self, job: Job) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(self.table).values(task_id=str(job.id), **self._values(job)))
                self._reindex(conn, job)
        except IntegrityError:
            raise DuplicateJobError(
                f"A job with id {job.id!r} already exists; submit without id= to get a new one"
            ) from None

    def get(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            raw = conn.execute(
                sa.select(self.table.c.result).where(self.table.c.task_id == job_id)
            ).scalar()
        return None if raw is None else self._decode(raw)

    def update(
        self,
        job_id: str,
        change: Change,
        *,
        assume: Job | None = None,
        result: TaskResult | None = None,
    ) -> Job | None:
        column = self.table.c
        guess = assume
        while True:
            with self.engine.begin() as conn:
                if guess is not None:
                    # Write against the assumed record; a miss falls back to reading it.
                    stored, status, raw = guess, guess.status.name, self._encoded(guess)
                    guess, assumed = None, True
                else:
                    row = conn.execute(
                        sa.select(column.status, column.result).where(column.task_id == job_id)
                    ).first()
                    if row is None or row.result is None:
                        return None
                    stored, status, raw = self._decode(row.result), row.status, row.result
                    assumed = False
                new = change(stored)
                if new is None:
                    if assumed:
                        continue
                    return None
                new = stamped(new)
                written = conn.execute(
                    sa.update(self.table)
                    .where(column.task_id == job_id, column.status == status, column.result == raw)
                    .values(**self._values(new))
                )
                if written.rowcount != 1:
                    continue
                self._reindex(conn, new)
            if result is not None:
                result.store_after(self.backend, new)
            return new

    def wait_final(self, job_id: str, timeout: float | None, poll_interval: float) -> Job | None:
        return poll_until_final(self, job_id, timeout, poll_interval)

    def delete(self, job_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(self.table).where(self.table.c.task_id == job_id))
            conn.execute(sa.delete(self.index).where(self.index.c.job_id == job_id))

    def _range(self, kind: str, until: datetime, limit: int) -> list[str]:
        column = self.index.c
        query = (
            sa.select(column.job_id)
            .where(column.kind == kind, column.at <= _naive_utc(until))
            .order_by(column.at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [str(job_id) for job_id in conn.execute(query).scalars()]

    def due(self, now: datetime, limit: int) -> list[str]:
        return self._range(SCHEDULED, now, limit)

    def stale(self, before: datetime, limit: int) -> list[str]:
        return self._range(ACTIVE, before, limit)
