"""The index of scheduled jobs by due time, for the django-db result backend."""

from django.db import models


class ScheduledJob(models.Model):
    """A SCHEDULED job waiting for beat; the job itself is its TaskResult row."""

    job_id = models.CharField(max_length=255, primary_key=True)
    due_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "scheduled job"
        ordering = ["due_at"]

    def __str__(self) -> str:
        return f"{self.job_id} due {self.due_at:%Y-%m-%d %H:%M:%S}"
