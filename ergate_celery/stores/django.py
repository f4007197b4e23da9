"""Job records in django-celery-results' `TaskResult` table (`result_backend = "django-db"`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from ..exceptions import ErgateError
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
Columns = tuple[str, str]

# django-celery-results' backend_cleanup deletes rows by date_done whatever their status, so
# a job that must not expire carries a date_done that never comes; it gets a real one when
# the expiry rule says it may expire.
_NEVER = datetime(9999, 12, 31, tzinfo=UTC)


def _to_db(moment: datetime) -> datetime:
    """`moment` as Django stores it: aware under USE_TZ, naive UTC without."""
    return moment if settings.USE_TZ else moment.astimezone(UTC).replace(tzinfo=None)


def _from_db(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


class DjangoJobStore(BaseJobStore[Columns]):
    """One `TaskResult` row per job, so the Django admin lists jobs with their status."""

    def __init__(self, backend: Any, max_bytes: int) -> None:
        super().__init__(backend, max_bytes)
        self.model: Any = backend.TaskModel

    def _content(self, job: Job) -> str:
        content: str = self.backend.encode_content(job_document(job))[2]
        return content

    def _values(self, job: Job, limit: int | None = None) -> dict[str, Any]:
        content_type, content_encoding, content = self.backend.encode_content(job_document(job))
        check_size(job, content, limit or self.max_bytes)
        return {
            "status": job.status.name,
            "result": content,
            "content_type": content_type,
            "content_encoding": content_encoding,
            "traceback": job.error.traceback if job.error else None,
            "task_name": f"ergate.{job.workflow_name}",
            "date_done": timezone.now() if expiring(job) else _to_db(_NEVER),
        }

    @property
    def index(self) -> Any:
        if not apps.is_installed("ergate_celery.contrib.django"):
            raise ErgateError(
                "Jobs on the django-db backend need the ergate_celery Django app: add "
                '"ergate_celery.contrib.django" to INSTALLED_APPS and run migrate'
            )
        return apps.get_model("ergate_celery", "JobIndexEntry")

    def _reindex(self, job: Job) -> None:
        index = self.index
        index.objects.filter(job_id=str(job.id)).delete()
        entry = index_entry(job, pending=True)
        if entry is not None:
            index.objects.create(job_id=entry.job_id, kind=entry.kind, at=_to_db(entry.at))

    def _read(self, job_id: str) -> Stored[Columns] | None:
        row = self.model.objects.filter(task_id=job_id).first()
        if row is None or row.result is None:
            return None
        job = job_from_document(self.backend.decode_content(row, row.result))
        return Stored(job, (row.status, row.result))

    def _token_of(self, job: Job) -> Columns:
        return job.status.name, self._content(job)

    def _compare_and_set(
        self, job_id: str, expected: Columns, new: Job, result: TaskResult | None
    ) -> Stored[Columns] | Outcome:
        status, content = expected
        with transaction.atomic():
            written = self.model.objects.filter(
                task_id=job_id, status=status, result=content
            ).update(**self._values(new))
            if written != 1:
                return self._read(job_id) or Outcome.GONE
            self._reindex(new)
        return Outcome.WRITTEN

    def _insert(self, job: Job) -> bool:
        values = self._values(job, self.create_limit)
        try:
            with transaction.atomic():
                self.model.objects.create(task_id=str(job.id), **values)
                # date_done is auto_now, which save() overrides: set it with an UPDATE.
                self.model.objects.filter(task_id=str(job.id)).update(date_done=values["date_done"])
                self._reindex(job)
        except IntegrityError:
            return False
        return True

    def delete(self, job_id: str) -> None:
        with transaction.atomic():
            self.model.objects.filter(task_id=job_id).delete()
            self.index.objects.filter(job_id=job_id).delete()

    def index_entries(self, kind: str, until: datetime, limit: int) -> list[IndexEntry]:
        rows = self.index.objects.filter(kind=kind, at__lte=_to_db(until)).order_by("at")[:limit]
        return [
            IndexEntry(kind, str(job_id), _from_db(at))
            for job_id, at in rows.values_list("job_id", "at")
        ]

    def drop_index_entry(self, entry: IndexEntry) -> bool:
        dropped, _ = self.index.objects.filter(
            job_id=entry.job_id, kind=entry.kind, at=_to_db(entry.at)
        ).delete()
        return bool(dropped)
