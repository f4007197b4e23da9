"""Job records in django-celery-results' `TaskResult` table (`result_backend = "django-db"`)."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..exceptions import DuplicateJobError
from ..job import Job
from .base import Change, check_size, job_document, job_from_document


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
            "date_done": timezone.now(),
        }

    def _decode(self, row: Any) -> Job:
        return job_from_document(self.backend.decode_content(row, row.result))

    def create(self, job: Job) -> None:
        try:
            with transaction.atomic():
                self.model.objects.create(task_id=str(job.id), **self._values(job))
        except IntegrityError:
            raise DuplicateJobError(
                f"A job with id {job.id!r} already exists; submit without id= to get a new one"
            ) from None

    def get(self, job_id: str) -> Job | None:
        row = self.model.objects.filter(task_id=job_id).first()
        return None if row is None or row.result is None else self._decode(row)

    def update(self, job_id: str, change: Change) -> Job | None:
        while True:
            row = self.model.objects.filter(task_id=job_id).first()
            if row is None or row.result is None:
                return None
            new = change(self._decode(row))
            if new is None:
                return None
            written = self.model.objects.filter(
                task_id=job_id, status=row.status, result=row.result
            ).update(**self._values(new))
            if written == 1:
                return new

    def delete(self, job_id: str) -> None:
        self.model.objects.filter(task_id=job_id).delete()
