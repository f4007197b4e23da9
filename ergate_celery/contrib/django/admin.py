"""The Django admin for ergate jobs on django-db: job records filtered by status, workflow and
date, searched by id and tags, retried and cancelled by action, each shown as a job page.

On another result backend there are no job rows here; the console (`urls.py`) lists jobs on
every backend.
"""

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from pydantic import ValidationError

from ergate_celery.binding import ErgateCelery
from ergate_celery.contrib.django.job_display import current_step, display
from ergate_celery.contrib.django.models import ErgateJob, JobTag
from ergate_celery.exceptions import (
    ErgateError,
    JobNotFoundError,
    JobStateError,
    UnknownStepError,
)
from ergate_celery.model.job_status import FINAL_STATUSES, JobStatus
from ergate_celery.stores.base import job_from_document

_FINAL_NAMES = [status.name for status in FINAL_STATUSES]


class StatusFilter(admin.SimpleListFilter):
    """By status name, in the lifecycle's order."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(status.name, status.name) for status in JobStatus]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(status=value) if value else queryset


class WorkflowFilter(admin.SimpleListFilter):
    """By workflow, among those registered with the current Celery app."""

    title = "workflow"
    parameter_name = "workflow"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        try:
            names = sorted(ErgateCelery.of().workflows)
        except ErgateError:
            names = []  # no binding in this process: nothing to offer, the list still works
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(task_name=f"ergate.{value}") if value else queryset


@admin.register(ErgateJob)
class ErgateJobAdmin(admin.ModelAdmin):
    """Job records (not step task results) from django-celery-results' table."""

    list_display = (
        "task_id",
        "workflow",
        "status_name",
        "progress",
        "step",
        "date_created",
        "finished",
    )
    list_filter = (StatusFilter, WorkflowFilter, "date_created")
    date_hierarchy = "date_created"
    search_fields = ("task_id",)
    search_help_text = "A job id (or part of it), a tag value, or a tag as key=value."
    ordering = ("-date_created",)
    readonly_fields = ("task_id", "task_name", "status", "date_created")
    fields = readonly_fields
    actions = ("retry_jobs", "cancel_jobs")
    change_form_template = "ergate_celery/admin/job_change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return (
            super()
            .get_queryset(request)
            .filter(task_name__startswith="ergate.", status__in=[s.name for s in JobStatus])
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term:
            key, equals, value = term.partition("=")
            tags = (
                JobTag.objects.filter(key=key.strip(), value=value.strip())
                if equals
                else JobTag.objects.filter(value=term)
            )
            found = found | queryset.filter(task_id__in=tags.values("job_id"))
        return found, duplicates

    # Columns ------------------------------------------------------------------------------

    @admin.display(description="workflow", ordering="task_name")
    def workflow(self, row: ErgateJob) -> str:
        return str(row.task_name).removeprefix("ergate.")

    @admin.display(description="status", ordering="status")
    def status_name(self, row: ErgateJob) -> str:
        return str(row.status)

    @admin.display(description="progress")
    def progress(self, row: ErgateJob) -> str:
        return f"{row.document().get('percent_completed', 0.0):.0f}%"

    @admin.display(description="current step")
    def step(self, row: ErgateJob) -> str:
        try:
            return current_step(job_from_document(row.document()))
        except ValidationError:
            return "?"

    @admin.display(description="finished")
    def finished(self, row: ErgateJob) -> Any:
        return row.document().get("finished_at")

    # The job page -------------------------------------------------------------------------

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        row = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if row is not None:
            try:
                context["shown"] = display(job_from_document(row.document()))
            except ValidationError:
                context["unreadable"] = True
        return super().change_view(request, object_id, form_url, context)

    # Actions ------------------------------------------------------------------------------

    @admin.action(
        description="Retry the selected jobs (FAILED, ABORTED, CANCELLED)", permissions=["operate"]
    )
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        ergate = ErgateCelery.of()
        retried, refused = 0, []
        for job_id in queryset.values_list("task_id", flat=True):
            try:
                ergate.retry_job(job_id)
            except (JobStateError, JobNotFoundError, UnknownStepError) as exc:
                refused.append(str(exc))
            else:
                retried += 1
        self._report(request, f"{retried} job{'s' * (retried != 1)} retried", refused)

    @admin.action(description="Cancel the selected jobs", permissions=["operate"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        ergate = ErgateCelery.of()
        cancelled, refused = 0, []
        for job_id, status in queryset.values_list("task_id", "status"):
            if status in _FINAL_NAMES:
                refused.append(f"Job {job_id!r} had already ended: {status}")
                continue
            try:
                ergate.cancel_job(job_id)
            except JobNotFoundError as exc:
                refused.append(str(exc))
            else:
                cancelled += 1
        self._report(request, f"{cancelled} job{'s' * (cancelled != 1)} cancelled", refused)

    def _report(self, request: HttpRequest, done: str, refused: list[str]) -> None:
        self.message_user(request, f"{done}.", messages.SUCCESS)
        for reason in refused[:10]:
            self.message_user(request, reason, messages.WARNING)
        if len(refused) > 10:
            self.message_user(request, f"… and {len(refused) - 10} more.", messages.WARNING)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions: dict[str, Any] = super().get_actions(request)
        if "delete_selected" in actions:
            actions["delete_selected"] = (
                ErgateJobAdmin.delete_finished,
                "delete_selected",
                "Delete the selected finished jobs",
            )
        return actions

    def delete_finished(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        """Django's bulk delete, refused when a selected job has not finished: deleting its
        record would strand its steps (cancel it first)."""
        unfinished = queryset.exclude(status__in=_FINAL_NAMES).count()
        if unfinished:
            self.message_user(
                request,
                f"Nothing deleted: {unfinished} of the selected jobs have not finished. "
                "Cancel them first, or select finished jobs only.",
                messages.ERROR,
            )
            return None
        return delete_selected(self, request, queryset)

    # Permissions --------------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # records change only through the actions (and the workers)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.status not in _FINAL_NAMES:
            return False
        return bool(super().has_delete_permission(request, obj))

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Who may retry and cancel: those with the model's change permission."""
        return bool(admin.ModelAdmin.has_change_permission(self, request))
