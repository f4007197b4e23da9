"""The job index for the django-db result backend: scheduled jobs by due time, active jobs
by their last change (the job itself is its django-celery-results TaskResult row)."""

from django.db import models


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
