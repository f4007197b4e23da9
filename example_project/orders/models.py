"""Which user submitted which job: the job itself lives in the Celery result backend."""

from django.conf import settings
from django.db import models


class OrderJob(models.Model):
    """One order a user placed, by the id of the job that processes it."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="order_jobs"
    )
    job_id = models.CharField(max_length=100, unique=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["user", "-created"], name="orders_user_created")]

    def __str__(self) -> str:
        return f"{self.job_id} ({self.user})"
