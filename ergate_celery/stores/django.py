"""Job records in django-celery-results' `TaskResult` table (`result_backend = "django-db"`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from ..exceptions import DuplicateJobError, ErgateError
from ..job import Job
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

# django-celery-results' backend_cleanup deletes rows by date_done whatever their status, so
# an unfinished job carries a date_done that never comes; it gets the real one when it ends.
_NEVER = datetime(9999, 12, 31, tzinfo=UTC)


class DjangoJobStore:
    """One `TaskResult` row per job, so the Django admin lists jobs with their status."""

    def __init__(self, backend: Any, max_bytes: int) -> None:
        self.backend = backend
        self.max_bytes = max_bytes
        self.model: Any = backend.TaskModel

    def _values(self, job: Job) -> dict[str, Any]:
        content_type, content_encoding, content = self.backend.encode_content(job_document(job))
        check_size(job, content, self.max_bytes)
        return {
            "status": job.status.name,
            "result": content,
            "content_type": content_type,
            "content_encoding": content_encoding,
            "traceback": job.error.traceback if job.error else None,
            "task_name": f"ergate.{job.workflow_name}",
            "date_done": timezone.now() if job.is_final else _never(),
        }

    def _decode(self, row: Any) -> Job:
        return job_from_document(self.backend.decode_content(row, row.result))

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
        entry = index_entry(job)
        if entry is not None:
            index.objects.create(job_id=str(job.id), kind=entry[0], at=entry[1])

    def create(self, job: Job) -> None:
        try:
            values = self._values(job)
            with transaction.atomic():
                self.model.objects.create(task_id=str(job.id), **values)
                # date_done is auto_now, which save() overrides: set it with an UPDATE.
                self.model.objects.filter(task_id=str(job.id)).update(date_done=values["date_done"])
                self._reindex(job)
        except IntegrityError:
            raise DuplicateJobError(
                f"A job with id {job.id!r} already exists; submit without id= to get a new one"
            ) from None

    def get(self, job_id: str) -> Job | None:
        row = self.model.objects.filter(task_id=job_id).first()
        return None if row is None or row.result is None else self._decode(row)

    def update(
        self,
        job_id: str,
        change: Change,
        *,
        assume: Job | None = None,
        result: TaskResult | None = None,
    ) -> Job | None:
        guess = assume
        while True:
            if guess is not None:
                # Write against the assumed record; a miss falls back to reading it.
                stored, status = guess, guess.status.name
                content = self.backend.encode_content(job_document(guess))[2]
                guess, assumed = None, True
            else:
                row = self.model.objects.filter(task_id=job_id).first()
                if row is None or row.result is None:
                    return None
                stored, status, content = self._decode(row), row.status, row.result
                assumed = False
            new = change(stored)
            if new is None:
                if assumed:
                    continue
                return None
            new = stamped(new)
            with transaction.atomic():
                written = self.model.objects.filter(
                    task_id=job_id, status=status, result=content
                ).update(**self._values(new))
                if written != 1:
                    continue
                self._reindex(new)
            if result is not None:
                result.store_after(self.backend, new)
            return new

    def wait_final(self, job_id: str, timeout: float | None, poll_interval: float) -> Job | None:
        return poll_until_final(self, job_id, timeout, poll_interval)

    def delete(self, job_id: str) -> None:
        with transaction.atomic():
            self.model.objects.filter(task_id=job_id).delete()
            self.index.objects.filter(job_id=job_id).delete()

    def _range(self, kind: str, until: datetime, limit: int) -> list[str]:
        rows = self.index.objects.filter(kind=kind, at__lte=until).order_by("at")[:limit]
        return [str(job_id) for job_id in rows.values_list("job_id", flat=True)]

    def due(self, now: datetime, limit: int) -> list[str]:
        return self._range(SCHEDULED, now, limit)

    def stale(self, before: datetime, limit: int) -> list[str]:
        return self._range(ACTIVE, before, limit)


def _never() -> datetime:
    return _NEVER if settings.USE_TZ else _NEVER.replace(tzinfo=None)
