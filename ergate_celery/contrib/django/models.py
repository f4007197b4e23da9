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


class JobListing(models.Model):
    """Every job by submission time, with its status (moved with each change) and workflow:
    where `list_jobs` reads, newest first."""

    job_id = models.CharField(max_length=255, primary_key=True)
    workflow = models.CharField(max_length=255)
    status = models.CharField(max_length=16)
    submitted_at = models.DateTimeField()

    class Meta:
        verbose_name = "job listing entry"
        verbose_name_plural = "job listing"
        indexes = [
            models.Index(fields=["submitted_at", "job_id"], name="ergate_list_at"),
            models.Index(fields=["status", "submitted_at"], name="ergate_list_status_at"),
            models.Index(fields=["workflow", "submitted_at"], name="ergate_list_workflow_at"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} {self.status}"


class JobTag(models.Model):
    """One tag of a job (`submit_job(tags=...)`), searchable."""

    job_id = models.CharField(max_length=255)
    key = models.CharField(max_length=64)
    value = models.CharField(max_length=200)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["key", "value", "job_id"], name="ergate_tag_unique")
        ]
        indexes = [models.Index(fields=["job_id"], name="ergate_tag_job")]

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


class PausedWorkflow(models.Model):
    """A workflow whose steps do not start until it is resumed."""

    workflow = models.CharField(max_length=255, primary_key=True)

    def __str__(self) -> str:
        return str(self.workflow)


class ConcurrencySlots(models.Model):
    """Which jobs of a workflow's concurrency key are in progress, and which wait (one small
    JSON document, changed by compare-and-set)."""

    name = models.CharField(max_length=500, primary_key=True)
    document = models.TextField()

    class Meta:
        verbose_name = "concurrency slots"
        verbose_name_plural = "concurrency slots"

    def __str__(self) -> str:
        return str(self.name)


class ErgateJob(TaskResult):
    """A job record, seen through django-celery-results' TaskResult row (a proxy)."""

    class Meta:
        proxy = True
        verbose_name = "ergate job"

    def __str__(self) -> str:
        # The admin's title and breadcrumb: a job of a workflow, not TaskResult's "<Task: …>".
        workflow = str(self.task_name or "").removeprefix("ergate.")
        return f"{workflow} job {self.task_id} ({self.status})"

    def document(self) -> dict[str, Any]:
        """The stored job as a dict (empty if the row holds no readable job)."""
        try:
            value = json.loads(self.result or "null")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
