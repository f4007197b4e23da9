"""The django-db store on PostgreSQL: each write of a job is one statement, in one round trip.

As the SQLAlchemy store does on PostgreSQL (sql_postgres.py): a job's change (its
`TaskResult` row's compare-and-set, its job index entry, its listing status, the step's
summary row) and a submission (the row, its index entry, listing row and tags) are each one
statement of data-modifying CTEs, sent on Django's own connection. In autocommit that one
statement is its own transaction; inside the caller's `atomic()` block it joins the caller's
transaction, in a savepoint as the ORM's nested `atomic()` would, so a failed write leaves
the caller's transaction usable. Every part after the row's write selects from its RETURNING,
so nothing else is written when it misses. A submission that parks its job when its workflow
is paused reads the paused table in the same statement.

Table and column names come from the models' `_meta`, values go through each field's own
`pre_save` and `get_db_prep_save` (as the ORM's INSERT and UPDATE do), and the statement texts
are built once per shape and reused.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

from django.db import DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from ergate_celery.stores.sql_listen import channel_of
from ergate_celery.stores.task_rows import (
    NewJob,
    batch_parameters,
    create_parameters,
    write_parameters,
)


class Found(NamedTuple):
    """The job's row as it stood when a compare-and-set missed (what `decode_content` reads)."""

    status: str
    result: str | None
    content_type: str
    content_encoding: str


class Written(NamedTuple):
    """Whether a compare-and-set wrote, and the row as it stood if not (None: no row)."""

    written: bool
    found: Found | None


class DjangoPostgres:
    """The one-statement writes of `DjangoJobStore` on one PostgreSQL connection alias."""

    def __init__(
        self,
        alias: str,
        connection: BaseDatabaseWrapper,
        model: Any,
        index: Any,
        listing: Any,
        tag: Any,
        paused: Any,
    ) -> None:
        self.alias = alias
        #: For the texts only (quoting, types): statements run on `connection`, this thread's.
        self._vendor_connection = connection
        self.model, self.index, self.listing, self.tag = model, index, listing, tag
        self.paused = paused
        quote = connection.ops.quote_name
        self._q = quote
        meta = model._meta
        #: The columns an ORM INSERT of a `TaskResult` writes: all but an unset AutoField.
        self.insert_fields = [
            field
            for field in meta.concrete_fields
            if not field.db_returning and not getattr(field, "generated", False)
        ]
        self.table = quote(meta.db_table)
        self.task_id = self._column(model, "task_id")
        self._shapes: dict[tuple[tuple[str, ...], bool, bool, tuple[str, ...], bool], str] = {}
        #: The channel a job's final write notifies (sql_listen.py).
        self.channel = channel_of(meta.db_table)
        self._inserts: dict[tuple[bool, bool], str] = {}
        self._many: str | None = None

    def _column(self, model: Any, name: str) -> str:
        return str(self._q(model._meta.get_field(name).column))

    def _cast(self, model: Any, name: str, param: str) -> str:
        """A typed parameter `%(param)s` for the field `name` in a SELECT list, whose type
        PostgreSQL could not infer: text for character fields (an explicit cast to varchar(n)
        would truncate), the field's own type otherwise."""
        field = model._meta.get_field(name)
        if field.get_internal_type() in ("CharField", "TextField"):
            kind = "text"
        else:
            kind = field.db_type(self._vendor_connection)
        return f"CAST(%({param})s AS {kind})"

    @property
    def connection(self) -> BaseDatabaseWrapper:
        """This thread's connection (Django's connections are per thread)."""
        return connections[self.alias]

    def prepared(self, instance: Any, fields: list[Any]) -> dict[str, Any]:
        """The parameters of an ORM INSERT of `instance` (auto_now fields set to now)."""
        return {
            f"s_{field.name}": field.get_db_prep_save(
                field.pre_save(instance, True), self.connection
            )
            for field in fields
        }

    def prepare(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters (`v_<name>`) of an ORM UPDATE of the row's fields to `values`."""
        field = self.model._meta.get_field
        return {
            f"v_{name}": field(name).get_db_prep_save(value, self.connection)
            for name, value in values.items()
        }

    # The statements.

    def _index_part(self, source: str, indexed: bool) -> str:
        index, job_id = self._q(self.index._meta.db_table), self._column(self.index, "job_id")
        if not indexed:
            return f"DELETE FROM {index} WHERE {job_id} IN (SELECT task_id FROM {source})"
        kind, at = self._column(self.index, "kind"), self._column(self.index, "at")
        return (
            f"INSERT INTO {index} ({job_id}, {kind}, {at}) SELECT task_id, "
            f"{self._cast(self.index, 'kind', 'i_kind')}, {self._cast(self.index, 'at', 'i_at')} "
            f"FROM {source} "
            f"ON CONFLICT ({job_id}) DO UPDATE SET {kind} = EXCLUDED.{kind}, {at} = EXCLUDED.{at}"
        )

    def _shape(
        self,
        columns: tuple[str, ...],
        indexed: bool,
        relisted: bool,
        summary: tuple[str, ...],
        final: bool,
    ) -> str:
        column = self._column
        model = self.model
        sets = ", ".join(f"{column(model, name)} = %(v_{name})s" for name in columns)
        parts = [
            f"written AS (UPDATE {self.table} SET {sets} WHERE {self.task_id} = %(b_task_id)s "
            f"AND {column(model, 'status')} = %(b_status)s "
            # The result compared by its digest: the record is not sent twice.
            f"AND sha256(convert_to({column(model, 'result')}, 'UTF8')) = %(b_digest)s "
            f"RETURNING {self.task_id} AS task_id)",
            f"indexed AS ({self._index_part('written', indexed)})",
        ]
        if relisted:
            listing = self.listing
            parts.append(
                f"relisted AS (UPDATE {self._q(listing._meta.db_table)} "
                f"SET {column(listing, 'status')} = %(l_status)s "
                f"WHERE {column(listing, 'job_id')} IN (SELECT task_id FROM written))"
            )
        if summary:
            names = [field.name for field in self.insert_fields]
            into = ", ".join(column(model, name) for name in names)
            values = ", ".join(self._cast(model, name, f"s_{name}") for name in names)
            updates = ", ".join(
                f"{column(model, name)} = EXCLUDED.{column(model, name)}" for name in summary
            )
            parts.append(
                f"summarized AS (INSERT INTO {self.table} ({into}) SELECT {values} "
                f"WHERE EXISTS (SELECT 1 FROM written) "
                f"ON CONFLICT ({self.task_id}) DO UPDATE SET {updates})"
            )
        found = ", ".join(
            f"found.{column(model, name)}"
            for name in ("status", "result", "content_type", "content_encoding")
        )
        if final:
            # Sent when this statement commits, and only if it wrote: the job has ended. A
            # SELECT in a WITH runs only if the statement reads it.
            parts.append("notified AS (SELECT pg_notify(%(n_channel)s, task_id) FROM written)")
            found += ", (SELECT count(*) FROM notified)"
        # The row as it stood before this statement, only when nothing was written: a write
        # that succeeds gets back one integer, not the record.
        return (
            f"WITH {', '.join(parts)} SELECT (SELECT count(*) FROM written), {found} "
            f"FROM (SELECT 1) AS one LEFT JOIN {self.table} AS found "
            f"ON found.{self.task_id} = %(b_task_id)s AND NOT EXISTS (SELECT 1 FROM written)"
        )

    def _insert(self, indexed: bool, unless_paused: bool) -> str:
        model, column = self.model, self._column
        names = [field.name for field in self.insert_fields]
        into = ", ".join(column(model, name) for name in names)
        values = ", ".join(f"%(s_{name})s" for name in names)
        paused, reported = "", "false"
        if unless_paused:
            # Whether the workflow is paused, read once: it picks the document stored, and
            # the statement reports it.
            values = ", ".join(
                "CASE WHEN (SELECT is_paused FROM paused) THEN %(p_result)s ELSE %(s_result)s END"
                if name == "result"
                else f"%(s_{name})s"
                for name in names
            )
            table = self._q(self.paused._meta.db_table)
            paused = (
                f"paused AS (SELECT EXISTS (SELECT 1 FROM {table} WHERE "
                f"{column(self.paused, 'workflow')} = %(p_workflow)s) AS is_paused), "
            )
            reported = "(SELECT is_paused FROM paused)"
        listing, tag = self.listing, self.tag
        listed = ", ".join(
            column(listing, name) for name in ("job_id", "workflow", "status", "submitted_at")
        )
        tagged = ", ".join(column(tag, name) for name in ("job_id", "key", "value"))
        index = self._index_part("created", indexed)
        return (
            f"WITH {paused}created AS (INSERT INTO {self.table} ({into}) VALUES ({values}) "
            f"ON CONFLICT ({self.task_id}) DO NOTHING RETURNING {self.task_id} AS task_id), "
            f"indexed AS ({index}), "
            f"listed AS (INSERT INTO {self._q(listing._meta.db_table)} ({listed}) "
            f"SELECT task_id, {self._cast(listing, 'workflow', 'l_workflow')}, "
            f"{self._cast(listing, 'status', 'l_status')}, "
            f"{self._cast(listing, 'submitted_at', 'l_submitted_at')} FROM created "
            f"WHERE %(l_submitted_at)s IS NOT NULL), "
            f"tagged AS (INSERT INTO {self._q(tag._meta.db_table)} ({tagged}) "
            f"SELECT created.task_id, pairs.key, pairs.value FROM created, "
            f"unnest(CAST(%(t_keys)s AS text[]), CAST(%(t_values)s AS text[])) "
            f"AS pairs(key, value)) "
            f"SELECT (SELECT count(*) FROM created), {reported}"
        )

    def _array(self, model: Any, name: str, param: str) -> str:
        """`%(param)s`, a list of the field `name`'s values, as a typed array (see `_cast`)."""
        field = model._meta.get_field(name)
        kind = "text"
        if field.get_internal_type() not in ("CharField", "TextField"):
            kind = field.db_type(self._vendor_connection)
        return f"CAST(%({param})s AS {kind}[])"

    def _insert_many(self) -> str:
        # As `_insert`, for many rows: one array per column, unnested into rows, so the text
        # is the same for any number of jobs; the other tables' rows join the created ones.
        model, column, q = self.model, self._column, self._q
        names = [field.name for field in self.insert_fields]
        into = ", ".join(column(model, name) for name in names)
        rows = ", ".join(self._array(model, name, f"r_{name}") for name in names)
        parts = [
            f"created AS (INSERT INTO {self.table} ({into}) SELECT * FROM unnest({rows}) "
            f"ON CONFLICT ({self.task_id}) DO NOTHING RETURNING {self.task_id} AS task_id)"
        ]
        index_key = column(self.index, "job_id")
        kind, at = column(self.index, "kind"), column(self.index, "at")
        for name, model_of, prefix, fields, conflict in (
            (
                "indexed",
                self.index,
                "i",
                ("job_id", "kind", "at"),
                f" ON CONFLICT ({index_key}) DO UPDATE SET {kind} = EXCLUDED.{kind}, "
                f"{at} = EXCLUDED.{at}",
            ),
            ("listed", self.listing, "l", ("job_id", "workflow", "status", "submitted_at"), ""),
            ("tagged", self.tag, "t", ("job_id", "key", "value"), ""),
        ):
            arrays = ", ".join(self._array(model_of, f, f"{prefix}_{f}") for f in fields)
            parts.append(
                f"{name} AS (INSERT INTO {q(model_of._meta.db_table)} "
                f"({', '.join(column(model_of, f) for f in fields)}) "
                f"SELECT {', '.join(f'given.{f}' for f in fields)} "
                f"FROM unnest({arrays}) AS given({', '.join(fields)}) "
                f"JOIN created ON created.task_id = given.job_id{conflict})"
            )
        return f"WITH {', '.join(parts)} SELECT task_id FROM created"

    # Running them.

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        # Inside the caller's transaction, in a savepoint (as the ORM's nested atomic()): a
        # failed statement would otherwise abort the caller's whole transaction.
        if self.connection.in_atomic_block:
            with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
                yield cursor
        else:
            try:
                with self.connection.cursor() as cursor:
                    yield cursor
            except DatabaseError:
                # A connection the server closed (a restart, pg_terminate_backend) would fail
                # every later statement of this task: Celery's Django fixup replaces it only
                # between tasks. Closed here if unusable, the runtime's retry opens a new one.
                self.connection.close_if_unusable_or_obsolete()
                raise

    def compare_and_set(
        self,
        params: dict[str, Any],
        columns: tuple[str, ...],
        entry: tuple[str, Any] | None,
        relist: str | None,
        summary: tuple[tuple[str, ...], dict[str, Any]] | None,
        final: bool = False,
    ) -> Written:
        """Set the row's `columns` (params hold them as `v_<name>`, and `b_task_id`,
        `b_status`, `b_digest` to compare: the SHA-256 of the result's UTF-8), its index
        `entry` (kind, at) or none, its listing status `relist` when it changed, and the
        step's `summary` (the columns its upsert sets on conflict, and its row's
        parameters); a `final` write notifies the channel (its waiters) of the job's id."""
        key = (
            columns,
            entry is not None,
            relist is not None,
            () if summary is None else summary[0],
            final,
        )
        statement = self._shapes.get(key)
        if statement is None:
            statement = self._shapes[key] = self._shape(*key)
        values = write_parameters(params, entry, relist, None if summary is None else summary[1])
        if final:
            values["n_channel"] = self.channel
        with self._cursor() as cursor:
            cursor.execute(statement, values)
            count, *found = cursor.fetchone()[:5]  # the notified count, if any, follows
        if count == 1:
            return Written(True, None)
        return Written(False, None if found[0] is None else Found(*found))

    def create_many(self, jobs: list[NewJob]) -> set[str]:
        """Insert the rows of `jobs` (each its INSERT parameters) whose ids are free, with
        their index entries, listing rows and tags, in one statement; the ids stored.
        IntegrityError (nothing written) when a listing row or tag of a created job is there
        already (left by an expired record)."""
        if self._many is None:
            self._many = self._insert_many()
        names = [field.name for field in self.insert_fields]
        params = batch_parameters(jobs, names, "s_{}")
        with self._cursor() as cursor:
            cursor.execute(self._many, params)
            return {str(task_id) for (task_id,) in cursor.fetchall()}

    def create(
        self,
        row: dict[str, Any],
        entry: tuple[str, Any] | None,
        listed: tuple[str, str, Any] | None,
        tags: Mapping[str, str],
        parked: tuple[str, Any] | None = None,
    ) -> tuple[bool, bool]:
        """Insert a job's row (its INSERT parameters) with its index entry (or the removal of
        any), listing row and tags; with `parked` (the job's workflow, and the `result` of its
        parked row), that result if the workflow is paused. Whether it was stored (not when
        the id is taken: then nothing is written), and whether parked."""
        shape = (entry is not None, parked is not None)
        statement = self._inserts.get(shape)
        if statement is None:
            statement = self._inserts[shape] = self._insert(*shape)
        params = create_parameters(row, entry, listed, tags)
        if parked is not None:
            params["p_workflow"], params["p_result"] = parked
        with self._cursor() as cursor:
            cursor.execute(statement, params)
            count, stored_parked = cursor.fetchone()
        return count == 1, bool(stored_parked)


def is_psycopg3() -> bool:
    """Whether Django's PostgreSQL backend runs on psycopg 3 (LISTEN is read with it)."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3 as found

    return bool(found)


def connect_for_listening(alias: str) -> Any:
    """A psycopg 3 connection of its own to the database of `alias`, made as Django makes
    its own (its `OPTIONS`), in autocommit."""
    connection = connections[alias]
    conn = connection.get_new_connection(connection.get_connection_params())
    conn.autocommit = True
    return conn
