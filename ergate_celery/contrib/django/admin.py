"""The Django admin for ergate jobs: job records with workflow, status and progress."""

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from ...job_status import JobStatus
from .models import ErgateJob


@admin.register(ErgateJob)
class ErgateJobAdmin(admin.ModelAdmin):
    """Lists job records (not step task results) from django-celery-results' table."""

    list_display = ("task_id", "workflow", "status", "progress", "date_created", "finished")
    list_filter = ("status", "task_name")
    search_fields = ("task_id", "task_name")
    ordering = ("-date_created",)
    readonly_fields = ("task_id", "task_name", "status", "result", "traceback", "date_created")
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return (
            super()
            .get_queryset(request)
            .filter(task_name__startswith="ergate.", status__in=[s.name for s in JobStatus])
        )

    @admin.display(description="workflow", ordering="task_name")
    def workflow(self, job: ErgateJob) -> str:
        return str(job.task_name).removeprefix("ergate.")

    @admin.display(description="progress")
    def progress(self, job: ErgateJob) -> str:
        return f"{job.document().get('percent_completed', 0.0):.0f}%"

    @admin.display(description="finished")
    def finished(self, job: ErgateJob) -> Any:
        return job.document().get("finished_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
