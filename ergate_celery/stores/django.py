"""Job records in django-celery-results' `TaskResult` table (`result_backend = "django-db"`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

from celery import states
from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from ergate_celery.model.job import Job
from ergate_celery.stores.base import (
    BaseJobStore,
    IndexEntry,
    Outcome,
    Stored,
    TaskResult,
    expiring,
    index_entry,
    job_document,
    job_from_document,
)
from ergate_celery.stores.django_flow import DjangoFlowRows, app_model
from ergate_celery.stores.django_listing import from_db, list_job, listed_rows, to_db, unlist
from ergate_celery.stores.django_postgres import DjangoPostgres, connect_for_listening, is_psycopg3
from ergate_celery.stores.listing import JobQuery, Position
from ergate_celery.stores.sql_listen import Listener, can_listen, wait_final
from ergate_celery.stores.task_rows import NewJob, date_done, row_columns

#: The compare-and-set token: the row's status and result columns as read.
Columns = tuple[str, str]

# django-celery-results' backend_cleanup deletes rows by date_done whatever their status, so
# a job that must not expire carries a date_done that never comes; it gets a real one when
# the expiry rule says it may expire.
_NEVER = datetime(9999, 12, 31, tzinfo=UTC)


class DjangoJobStore(DjangoFlowRows, BaseJobStore[Columns]):
    """One `TaskResult` row per job, so the Django admin lists jobs with their status."""

    joins_django_transaction = True

    def __init__(
        self, backend: Any, max_bytes: int, expires_by_status: Mapping[str, int] | None = None
    ) -> None:
        super().__init__(backend, max_bytes, expires_by_status)
        self.model: Any = backend.TaskModel
        features = connections[router.db_for_write(self.model)].features
        #: Where the database has upserts (PostgreSQL, SQLite), the index entry and the step
        #: summary are each one statement, and the summary is written in the job's transaction.
        self.upserts = bool(features.supports_update_conflicts_with_target)
        self.writes_task_result = self.upserts
        self._postgres: DjangoPostgres | bool | None = False  # False: not looked at yet
        self._listener: Listener | None = None

    @property
    def postgres(self) -> DjangoPostgres | None:
        """The one-statement writes, where the job rows and the app's tables are all on one
        PostgreSQL database (django_postgres.py); None elsewhere (the ORM writes)."""
        if self._postgres is False:
            names = ("JobListing", "JobTag", "PausedWorkflow")
            models = [self.model, self.index, *(app_model(name) for name in names)]
            aliases = {router.db_for_write(model) for model in models}
            alias = aliases.pop()
            connection = connections[alias]
            self._postgres = None
            if not aliases and connection.vendor == "postgresql":
                self._postgres = DjangoPostgres(alias, connection, *models)
        assert self._postgres is not True
        return self._postgres

    def _server_time(self) -> datetime | None:
        connection = connections[router.db_for_write(self.model)]
        if connection.vendor != "postgresql":
            return None  # SQLite: the database's clock is this host's
        with connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            server: datetime = cursor.fetchone()[0]
        return server.astimezone(UTC)

    def _content(self, job: Job) -> str:
        content: str = self.backend.encode_content(job_document(job))[2]
        return content

    def _values(self, job: Job, limit: int | None = None) -> dict[str, Any]:
        content_type, content_encoding, content = self.backend.encode_content(job_document(job))
        return {
            **row_columns(job, content, limit or self.max_bytes),
            "content_type": content_type,
            "content_encoding": content_encoding,
            "task_name": f"ergate.{job.workflow_name}",
            "date_done": self._date_done(job),
        }

    def _date_done(self, job: Job) -> datetime:
        if not expiring(job):
            return to_db(_NEVER)
        done = date_done(self, job)
        return timezone.now() if done is None else to_db(done)

    @property
    def index(self) -> Any:
        return app_model("JobIndexEntry")

    def _reindex(self, job: Job) -> None:
        index = self.index
        entry = index_entry(job, pending=True, now=self.clock())
        if entry is None or not self.upserts:
            index.objects.filter(job_id=str(job.id)).delete()
        if entry is None:
            return
        row = index(job_id=entry.job_id, kind=entry.kind, at=to_db(entry.at))
        if self.upserts:
            index.objects.bulk_create(
                [row], update_conflicts=True, unique_fields=["job_id"], update_fields=["kind", "at"]
            )
        else:
            row.save(force_insert=True)

    def _store_summary(self, result: TaskResult, job: Job) -> None:
        """The step's summary row, as django-celery-results stores a task's SUCCESS (its
        `_store_result`), as one upsert in the job's transaction."""
        row, fields = self._summary(result, job)
        self.model._default_manager.bulk_create(
            [row], update_conflicts=True, unique_fields=["task_id"], update_fields=fields
        )

    def _summary(self, result: TaskResult, job: Job) -> tuple[Any, list[str]]:
        """The summary row, and the fields its upsert sets when the row exists."""
        backend = self.backend
        content_type, content_encoding, content = backend.encode_content(result.summarize(job))
        request = result.request
        meta = {
            **backend._get_meta_from_request(request),
            "children": backend.current_task_children(request),
        }
        fields = {
            "content_type": content_type,
            "content_encoding": content_encoding,
            "meta": backend.encode_content(meta)[2],
            "result": content,
            "status": states.SUCCESS,
            **backend._get_extended_properties(request, None),
        }
        return self.model(task_id=result.task_id, **fields), [*fields, "date_done"]

    def _read(self, job_id: str) -> Stored[Columns] | None:
        row = self.model.objects.filter(task_id=job_id).first()
        if row is None or row.result is None:
            return None
        job = job_from_document(self.backend.decode_content(row, row.result))
        return Stored(job, (row.status, row.result))

    def get_many(self, job_ids: list[str]) -> list[Job | None]:
        """The stored jobs of `job_ids`, in order (None for a gone one): one SELECT."""
        rows = self.model.objects.filter(task_id__in=job_ids) if job_ids else []
        found = {
            row.task_id: job_from_document(self.backend.decode_content(row, row.result))
            for row in rows
            if row.result is not None
        }
        return [found.get(job_id) for job_id in job_ids]

    def wait_final(self, job_id: str, timeout: float | None, poll_interval: float) -> Job | None:
        """See `JobStore.wait_final`: on PostgreSQL with psycopg 3, told of the job's end by a
        notification (sql_listen.py); elsewhere by reading every `poll_interval` s."""
        postgres = self.postgres
        if postgres is None or not is_psycopg3() or not can_listen():
            return super().wait_final(job_id, timeout, poll_interval)
        if self._listener is None:
            connect = partial(connect_for_listening, postgres.alias)
            self._listener = Listener(connect, postgres.channel)
        return wait_final(self._listener, self.get, job_id, timeout, poll_interval)

    def _token_of(self, job: Job) -> Columns:
        return job.status.name, self._content(job)

    def _compare_and_set(
        self,
        job_id: str,
        expected: Columns,
        new: Job,
        result: TaskResult | None,
        limit: int | None = None,
    ) -> Stored[Columns] | Outcome:
        values = self._values(new, limit)
        if self.postgres is not None:
            return self._compare_and_set_postgres(
                self.postgres, job_id, expected, new, values, result
            )
        status, content = expected
        with transaction.atomic():
            written = self.model.objects.filter(
                task_id=job_id, status=status, result=content
            ).update(**values)
            if written != 1:
                return self._read(job_id) or Outcome.GONE
            self._reindex(new)
            if status != new.status.name:
                app_model("JobListing").objects.filter(job_id=job_id).update(status=new.status.name)
            if result is not None and self.writes_task_result:
                self._store_summary(result, new)
        return Outcome.WRITTEN

    def _compare_and_set_postgres(
        self,
        postgres: DjangoPostgres,
        job_id: str,
        expected: Columns,
        new: Job,
        values: dict[str, Any],
        result: TaskResult | None,
    ) -> Stored[Columns] | Outcome:
        status, content = expected
        entry = index_entry(new, pending=True, now=self.clock())
        summary = None
        if result is not None and self.writes_task_result:
            row, fields = self._summary(result, new)
            summary = (tuple(fields), postgres.prepared(row, postgres.insert_fields))
        written, found = postgres.compare_and_set(
            {
                "b_task_id": job_id,
                "b_status": status,
                "b_digest": hashlib.sha256(content.encode()).digest(),
                **postgres.prepare(values),
            },
            tuple(values),
            None if entry is None else (entry.kind, to_db(entry.at)),
            None if status == new.status.name else new.status.name,
            summary,
            final=new.is_final,
        )
        if written:
            return Outcome.WRITTEN
        if found is None or found.result is None:
            return Outcome.GONE
        job = job_from_document(self.backend.decode_content(found, found.result))
        return Stored(job, (found.status, found.result))

    def _insert(self, job: Job) -> bool:
        values = self._values(job, self.create_limit)
        postgres = self.postgres
        if postgres is not None:
            return self._insert_postgres(postgres, job, values)[0]
        try:
            with transaction.atomic():
                self.model.objects.create(task_id=str(job.id), **values)
                # date_done is auto_now, which save() overrides: set it with an UPDATE.
                self.model.objects.filter(task_id=str(job.id)).update(date_done=values["date_done"])
                self._reindex(job)
                list_job(job)
        except IntegrityError:
            return False
        return True

    def _insert_unless_paused(self, job: Job) -> Job | None:
        postgres = self.postgres
        if postgres is None:
            return super()._insert_unless_paused(job)
        # The paused check inside the create statement: one statement, as every write here.
        parked = job.model_copy(update={"parked": True})
        result = self._values(parked, self.create_limit)["result"]  # size-checked too
        paused = (job.workflow_name, postgres.prepare({"result": result})["v_result"])
        values = self._values(job, self.create_limit)
        stored, stored_parked = self._insert_postgres(postgres, job, values, paused)
        return None if not stored else parked if stored_parked else job

    def _insert_postgres(
        self,
        postgres: DjangoPostgres,
        job: Job,
        values: dict[str, Any],
        paused: tuple[str, Any] | None = None,
    ) -> tuple[bool, bool]:
        """Whether `job` was stored in one statement, and whether parked (with `paused`: its
        workflow and parked `result`, stored instead if the workflow is paused)."""
        new = self._new_job(postgres, job, values)
        try:
            return postgres.create(dict(new.row), new.entry, new.listed, new.tags, paused)
        except IntegrityError:  # as the ORM path: a listing row left behind by the id
            return False, False

    def create_many(self, jobs: list[Job]) -> list[bool]:
        """See `JobStore.create_many`: on PostgreSQL, one statement for all of `jobs`."""
        postgres = self.postgres
        if postgres is None or not jobs:
            return super().create_many(jobs)
        new = [self._new_job(postgres, job, self._values(job, self.create_limit)) for job in jobs]
        try:
            created = postgres.create_many(new)
        except IntegrityError:  # what an expired record left under an id: `create` clears it
            return super().create_many(jobs)
        return [str(job.id) in created for job in jobs]

    def _new_job(self, postgres: DjangoPostgres, job: Job, values: dict[str, Any]) -> NewJob:
        """`job` as one statement creates it: its row's INSERT parameters, its index entry,
        its listing row and tags."""
        row = postgres.prepared(self.model(task_id=str(job.id), **values), postgres.insert_fields)
        # As the ORM path's UPDATE after its INSERT: date_done as computed, not auto_now's now.
        row["s_date_done"] = postgres.prepare({"date_done": values["date_done"]})["v_date_done"]
        entry = index_entry(job, pending=True, now=self.clock())
        submitted = job.submitted_at
        listed = None
        if submitted is not None:  # as `_list`: tags go with the listing row
            listed = (job.workflow_name, job.status.name, to_db(submitted))
        return NewJob(
            row,
            None if entry is None else (entry.kind, to_db(entry.at)),
            listed,
            job.tags if listed else {},
        )

    def _drop_leftovers(self, job_id: str) -> bool:
        # django-celery-results' cleanup deletes expired TaskResult rows only.
        with transaction.atomic():
            if self.model.objects.filter(task_id=job_id).exists():
                return False
            self.index.objects.filter(job_id=job_id).delete()
            unlist([job_id])
        return True

    def delete(self, job_id: str) -> None:
        with transaction.atomic():
            self.model.objects.filter(task_id=job_id).delete()
            self.index.objects.filter(job_id=job_id).delete()
            unlist([job_id])

    def index_entries(self, kind: str, until: datetime, limit: int) -> list[IndexEntry]:
        rows = self.index.objects.filter(kind=kind, at__lte=to_db(until)).order_by("at")[:limit]
        return [
            IndexEntry(kind, str(job_id), from_db(at))
            for job_id, at in rows.values_list("job_id", "at")
        ]

    def drop_index_entry(self, entry: IndexEntry) -> bool:
        dropped, _ = self.index.objects.filter(
            job_id=entry.job_id, kind=entry.kind, at=to_db(entry.at)
        ).delete()
        return bool(dropped)

    def _listed(
        self, query: JobQuery, after: Position | None, count: int
    ) -> list[tuple[Position, Job | None]]:
        listed: list[tuple[Position, Job | None]] = []
        for position, row in listed_rows(self.model, query, after, count):
            job = None
            if row is not None and row.result is not None:
                job = job_from_document(self.backend.decode_content(row, row.result))
            listed.append((position, job))
        gone = [position.job_id for position, job in listed if job is None]
        if gone:  # removed by backend_cleanup: trim what the records left behind
            unlist(gone)
        return listed
