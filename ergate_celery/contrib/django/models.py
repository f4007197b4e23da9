"""The job index for the django-db result backend: scheduled jobs by due time, active jobs
by their last change (the job itself is its django-celery-results TaskResult row)."""

import json
from typing import Any

from django.db import models
from django_celery_results.models import TaskResult


class JobIndexEntry(models.Model):
    """Where beat finds due jobs and the stuck-job sweep finds idle ones."""

    job_id = models.CharField(max_length=255, primary_key=True)
    kind = models.CharField(max_length=16)
    at = models.DateTimeField()

    class Meta:
        verbose_name = "job index entry"
        verbose_name_plural = "job index"
        indexes = [models.Index(fields=["kind", "at"], name="ergate_index_kind_at")]

    def __str__(self) -> str:
        return f"{self.job_id} {self.kind} since {self.at:%Y-%m-%d %H:%M:%S}"


class ErgateJob(TaskResult):
    """A job record, seen through django-celery-results' TaskResult row (a proxy)."""

    class Meta:
        proxy = True
        verbose_name = "ergate job"

    def document(self) -> dict[str, Any]:
        """The stored job as a dict (empty if the row holds no readable job)."""
        try:
            value = json.loads(self.result or "null")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
