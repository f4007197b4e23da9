"""Job records in the SQLAlchemy result backend's `celery_taskmeta` table."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ergate_celery.lifecycle.events import Claim
from ergate_celery.model.job import Job
from ergate_celery.stores.base import (
    BaseJobStore,
    ClaimedInOne,
    IndexEntry,
    Outcome,
    Stored,
    TaskResult,
    index_entry,
    job_document,
    job_from_document,
)
from ergate_celery.stores.listing import JobQuery, Position
from ergate_celery.stores.sql_batch import BatchCreate, new_job
from ergate_celery.stores.sql_claim import ClaimStatement
from ergate_celery.stores.sql_driver import driver_cursor
from ergate_celery.stores.sql_listen import (
    Listener,
    can_listen,
    connect_for_listening,
    wait_final,
)
from ergate_celery.stores.sql_listing import list_job, listing_page, unlist
from ergate_celery.stores.sql_postgres import PostgresStatements
from ergate_celery.stores.sql_slots import read_slots, slots_table, swap_slots
from ergate_celery.stores.sql_statements import Statements, digest_of, engine_for, reading
from ergate_celery.stores.sql_tables import job_tables, naive_utc
from ergate_celery.stores.sqlite import share_backend_between_processes, share_between_processes
from ergate_celery.stores.task_rows import date_done, row_columns
from ergate_celery.stores.written import LastWritten

_ENGINE_LOCK = threading.Lock()

#: The compare-and-set token: the row's status and result columns as read.
Columns = tuple[str, bytes]


class SQLAlchemyJobStore(BaseJobStore[Columns]):
    """One row per job in Celery's task table; changes are conditional UPDATEs."""

    def __init__(
        self, backend: Any, max_bytes: int, expires_by_status: Mapping[str, int] | None = None
    ) -> None:
        super().__init__(backend, max_bytes, expires_by_status)
        self.table: sa.Table = backend.task_cls.__table__
        self.index, self.listing, self.tags, self.paused = job_tables(self.table.schema)
        self.slots_table = slots_table(self.index.metadata)
        self._paused_names = sa.select(self.paused.c.workflow)
        self.sql = Statements(self.table, self.index, self.listing, backend.url)
        #: The step summary goes in the job's transaction where the database has upserts.
        self.writes_task_result = self.sql.writes_summaries
        #: On PostgreSQL, each write is one statement (sql_postgres.py).
        self.postgres: PostgresStatements | None = None
        if sa.engine.make_url(str(backend.url)).get_backend_name() == "postgresql":
            self.postgres = PostgresStatements(
                self.table,
                self.index,
                self.listing,
                self.tags,
                self.paused,
                self.sql.summary_columns,
            )
            self.batch = BatchCreate(self.table, self.index, self.listing, self.tags)
        #: The claim in one statement edits the record as JSON: PostgreSQL, JSON results.
        json_records = self.postgres is not None and backend.serializer == "json"
        self.claiming = (
            ClaimStatement(self.table, self.index, self.listing) if json_records else None
        )
        self._listener: Listener | None = None
        #: The records written last: a step's outcome is compared against its claim's.
        self._written: LastWritten[Columns] = LastWritten()
        self._engine: sa.Engine | None = None
        self._autocommit: sa.Engine | None = None
        self._engine_pid = 0
        if str(backend.url).startswith("sqlite"):
            share_backend_between_processes(backend)

    @property
    def engine(self) -> sa.Engine:
        # One pooled engine per process: a pool must not cross a fork into prefork children.
        if self._engine is None or self._engine_pid != os.getpid():
            # Threads racing on a process's first use would each create the tables, and
            # PostgreSQL refuses the second CREATE of a type being made.
            with _ENGINE_LOCK:
                if self._engine is None or self._engine_pid != os.getpid():
                    self._make_engine()
        assert self._engine is not None
        return self._engine

    def _make_engine(self) -> None:
        engine = engine_for(self.backend)
        if str(self.backend.url).startswith("sqlite"):
            share_between_processes(engine)
        self.table.metadata.create_all(engine, tables=[self.table])
        self.index.metadata.create_all(engine)  # every table of `job_tables`
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._engine, self._engine_pid = engine, os.getpid()

    @property
    def autocommit(self) -> sa.Engine:
        """The engine's pool in autocommit: a read, or a write of one statement, is sent
        without BEGIN and COMMIT (and without the ROLLBACK that ends a read otherwise)."""
        engine = self.engine  # this process's, with its autocommit view made beside it
        assert self._autocommit is not None
        assert self._autocommit.pool is engine.pool
        return self._autocommit

    def close(self) -> None:
        """Dispose of this process's engine and its pooled connections."""
        if self._engine is not None and self._engine_pid == os.getpid():
            self._engine.dispose()
        self._engine = self._autocommit = None

    def _encoded(self, job: Job) -> bytes:
        encoded = self.backend.encode(job_document(job))
        if isinstance(encoded, str):  # the JSON serializer gives text; the column is binary
            encoded = encoded.encode()
        return encoded  # type: ignore[no-any-return]

    def _values(self, job: Job, limit: int | None = None) -> dict[str, Any]:
        # Celery's backend_cleanup leaves rows without date_done alone: that is how a job
        # that must not expire is kept.
        done = date_done(self, job)
        return {
            **row_columns(job, self._encoded(job), limit or self.max_bytes),
            "date_done": None if done is None else naive_utc(done),
        }

    def _reindex(self, conn: sa.Connection, job: Job) -> None:
        entry = index_entry(job, now=self.clock())
        if entry is None:
            self.sql.reindex(conn, str(job.id), None, None)
        else:
            self.sql.reindex(conn, entry.job_id, entry.kind, naive_utc(entry.at))

    def _select(self, conn: sa.Connection, job_id: str) -> Stored[Columns] | None:
        row = conn.execute(self.sql.select, {"b_task_id": job_id}).first()
        if row is None or row.result is None:
            return None
        return Stored(job_from_document(self.backend.decode(row.result)), (row.status, row.result))

    def _server_time(self) -> datetime | None:
        if self.postgres is None:
            return None  # SQLite: the database's clock is this host's
        server = reading(
            self.autocommit, lambda conn: conn.execute(sa.text("SELECT clock_timestamp()")).scalar()
        )
        assert isinstance(server, datetime)
        return server.astimezone(UTC)

    def _read(self, job_id: str) -> Stored[Columns] | None:
        return reading(self.autocommit, lambda conn: self._select(conn, job_id))

    def get_many(self, job_ids: list[str]) -> list[Job | None]:
        """The stored jobs of `job_ids`, in order (None for a gone one): one SELECT."""
        query = sa.select(self.table.c.task_id, self.table.c.result).where(
            self.table.c.task_id.in_(job_ids)
        )
        rows = reading(self.autocommit, lambda conn: conn.execute(query).all()) if job_ids else []
        found = {
            row.task_id: job_from_document(self.backend.decode(row.result))
            for row in rows
            if row.result is not None
        }
        return [found.get(job_id) for job_id in job_ids]

    def wait_final(self, job_id: str, timeout: float | None, poll_interval: float) -> Job | None:
        """See `JobStore.wait_final`: on PostgreSQL with psycopg 3, told of the job's end by a
        notification (sql_listen.py); elsewhere by reading every `poll_interval` s."""
        if self.postgres is None or self.engine.dialect.driver != "psycopg" or not can_listen():
            return super().wait_final(job_id, timeout, poll_interval)
        if self._listener is None:
            connect = partial(connect_for_listening, self.engine)
            self._listener = Listener(connect, self.postgres.channel)
        return wait_final(self._listener, self.get, job_id, timeout, poll_interval)

    def _token_of(self, job: Job) -> Columns:
        return self._written.of(job) or (job.status.name, self._encoded(job))

    def _compare_and_set(
        self,
        job_id: str,
        expected: Columns,
        new: Job,
        result: TaskResult | None,
        limit: int | None = None,
    ) -> Stored[Columns] | Outcome:
        status, raw = expected
        values = self._values(new, limit)
        if self.postgres is not None:
            return self._compare_and_set_postgres(job_id, expected, new, values, result)
        with self.engine.begin() as conn:
            written = conn.execute(
                self.sql.compare_and_set,
                {"b_task_id": job_id, "b_status": status, "b_result": raw, **values},
            )
            if written.rowcount != 1:
                # In the same transaction: the record that won, for the caller to retry on.
                return self._select(conn, job_id) or Outcome.GONE
            self._reindex(conn, new)
            if status != new.status.name:
                conn.execute(self.sql.relist, {"b_job_id": job_id, "status": new.status.name})
            if result is not None and self.writes_task_result:
                self.sql.store_summary(conn, self.backend, result, new)
        return Outcome.WRITTEN

    def _compare_and_set_postgres(
        self,
        job_id: str,
        expected: Columns,
        new: Job,
        values: dict[str, Any],
        result: TaskResult | None,
    ) -> Stored[Columns] | Outcome:
        assert self.postgres is not None
        status, raw = expected
        entry = index_entry(new, now=self.clock())
        engine = self.engine
        with driver_cursor(engine) as cursor:
            written, row = self.postgres.compare_and_set(
                cursor,
                engine.dialect,
                {"b_task_id": job_id, "b_status": status, "b_digest": digest_of(raw), **values},
                None if entry is None else (entry.kind, naive_utc(entry.at)),
                None if status == new.status.name else new.status.name,
                None if result is None else self.sql.summary_values(self.backend, result, new),
                final=new.is_final,
            )
        if written:
            self._written.remember(new, (new.status.name, values["result"]))
            return Outcome.WRITTEN
        if row is None or row["result"] is None:
            return Outcome.GONE
        raw = bytes(row["result"])
        return Stored(job_from_document(self.backend.decode(raw)), (row["status"], raw))

    def claim_in_one(self, job_id: str, claim: Claim, now: datetime) -> ClaimedInOne | None:
        """See `BaseJobStore.claim_in_one`: on PostgreSQL, one statement (sql_claim.py)."""
        if self.claiming is None:
            return None
        params = self.claiming.parameters(job_id, claim, now, naive_utc(now), self.max_bytes)
        return self.claiming.claim(self.engine, params, self.backend.decode, self._written.remember)

    def _insert(self, job: Job) -> bool:
        if self.postgres is not None:
            return self._create_postgres(job, None) is not None
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.insert(self.table).values(
                        task_id=str(job.id), **self._values(job, self.create_limit)
                    )
                )
                self._reindex(conn, job)
                list_job(conn, self.listing, self.tags, job)
        except IntegrityError:
            return False
        return True

    def create_many(self, jobs: list[Job]) -> list[bool]:
        """See `JobStore.create_many`: on PostgreSQL, one statement for all of `jobs`."""
        if self.postgres is None or not jobs:
            return super().create_many(jobs)
        now = self.clock()
        new = [
            new_job(job, {"task_id": str(job.id), **self._values(job, self.create_limit)}, now)
            for job in jobs
        ]
        try:
            with self.autocommit.connect() as conn:
                created = self.batch.create(conn, new)
        except IntegrityError:
            # What an expired record left under one of the ids: `create` clears it.
            return super().create_many(jobs)
        return [str(job.id) in created for job in jobs]

    def _insert_unless_paused(self, job: Job) -> Job | None:
        if self.postgres is None:
            return super()._insert_unless_paused(job)
        # The paused check inside the create statement: one statement, as every write here.
        return self._create_postgres(job, job.model_copy(update={"parked": True}))

    def _create_postgres(self, job: Job, parked: Job | None) -> Job | None:
        """Store `job` in one statement, or `parked` instead if its workflow is paused; the
        job stored, or None when the id is taken."""
        assert self.postgres is not None
        paused = None
        if parked is not None:  # the same columns but the document (size-checked too)
            paused = (job.workflow_name, self._values(parked, self.create_limit)["result"])
        row = {"task_id": str(job.id), **self._values(job, self.create_limit)}
        new = new_job(job, row, self.clock())
        try:
            with self.autocommit.connect() as conn:
                stored_parked = self.postgres.create(conn, *new, paused)
        except IntegrityError:
            return None
        return parked if stored_parked and parked is not None else job

    def _drop_leftovers(self, job_id: str) -> bool:
        # Celery's cleanup deletes expired rows of its own table only.
        with self.engine.begin() as conn:
            held = sa.select(self.table.c.task_id).where(self.table.c.task_id == job_id)
            if conn.execute(held).first() is not None:
                return False
            conn.execute(sa.delete(self.index).where(self.index.c.job_id == job_id))
            unlist(conn, self.listing, self.tags, [job_id])
        return True

    def delete(self, job_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(self.table).where(self.table.c.task_id == job_id))
            conn.execute(sa.delete(self.index).where(self.index.c.job_id == job_id))
            unlist(conn, self.listing, self.tags, [job_id])

    def index_entries(self, kind: str, until: datetime, limit: int) -> list[IndexEntry]:
        column = self.index.c
        query = (
            sa.select(column.job_id, column.at)
            .where(column.kind == kind, column.at <= naive_utc(until))
            .order_by(column.at)
            .limit(limit)
        )
        rows = reading(self.autocommit, lambda conn: conn.execute(query).all())
        return [IndexEntry(kind, str(job_id), at.replace(tzinfo=UTC)) for job_id, at in rows]

    def drop_index_entry(self, entry: IndexEntry) -> bool:
        column = self.index.c
        with self.engine.begin() as conn:
            dropped = conn.execute(
                sa.delete(self.index).where(
                    column.job_id == entry.job_id,
                    column.kind == entry.kind,
                    column.at == naive_utc(entry.at),
                )
            )
        return dropped.rowcount == 1

    # The listing index.

    def _listed(
        self, query: JobQuery, after: Position | None, count: int
    ) -> list[tuple[Position, Job | None]]:
        select = listing_page(self.table, self.listing, self.tags, query, after, count)
        rows = reading(self.autocommit, lambda conn: conn.execute(select).all())
        listed: list[tuple[Position, Job | None]] = []
        for job_id, at, raw in rows:
            job = None if raw is None else job_from_document(self.backend.decode(raw))
            listed.append((Position(at.replace(tzinfo=UTC), str(job_id)), job))
        gone = [position.job_id for position, job in listed if job is None]
        if gone:  # removed by backend_cleanup: trim what the records left behind
            with self.engine.begin() as conn:
                unlist(conn, self.listing, self.tags, gone)
        return listed

    # Paused workflows.

    def paused_workflows(self) -> set[str]:
        # In autocommit: a read in a transaction ends in a ROLLBACK, on which psycopg drops
        # every prepared statement of the connection (the step's included).
        rows = reading(self.autocommit, lambda conn: conn.execute(self._paused_names).all())
        return {str(name) for (name,) in rows}

    def set_paused(self, workflow_name: str, paused: bool) -> bool:
        column = self.paused.c.workflow
        with self.engine.begin() as conn:
            if not paused:
                deleted = conn.execute(sa.delete(self.paused).where(column == workflow_name))
                return deleted.rowcount == 1
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(self.paused).values(workflow=workflow_name))
            except IntegrityError:
                return False
            return True

    # Concurrency slots.

    def _read_slots(self, name: str) -> str | None:
        return read_slots(self.autocommit, self.slots_table, name)

    def _swap_slots(self, name: str, expected: str | bytes | None, new: str | None) -> bool:
        return swap_slots(self.autocommit, self.slots_table, name, expected, new)
