"""The Django admin for ergate jobs on django-db: job records filtered by status, workflow and
date, searched by id and tags, retried and cancelled by action or by the job page's buttons,
each shown as a job page at `.../ergatejob/<job id>/change/`.

On another result backend there are no job rows here; the console (`urls.py`) lists jobs on
every backend.
"""

from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils import dateformat, timezone
from django.views.decorators.http import require_POST
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
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import FINAL_STATUSES, JobStatus
from ergate_celery.operations.flow import describe_wait, waiting_for
from ergate_celery.scheduling.overdue import overdue_note
from ergate_celery.stores.base import job_from_document

_FINAL_NAMES = [status.name for status in FINAL_STATUSES]
#: The one format of every date the admin and the console show (Django's `date` filter's).
DATE_FORMAT = "Y-m-d H:i:s"


def shown_date(value: datetime | str | None) -> str:
    """A stored moment (a datetime, or the ISO text of the job's JSON) in `DATE_FORMAT`, in
    the current time zone; "—" when there is none."""
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    if not isinstance(moment, datetime):
        return "—"
    if timezone.is_aware(moment):
        moment = timezone.localtime(moment)
    return str(dateformat.format(moment, DATE_FORMAT))


class JobChangeList(ChangeList):
    """Links each row to its job page by job id, not by row number."""

    def url_for_result(self, result: Model) -> str:
        url: str = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=(quote(result.task_id),),
            current_app=self.model_admin.admin_site.name,
        )
        return url


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
        "submitted",
        "finished",
        "error",
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

    @admin.display(description="submitted", ordering="date_created")
    def submitted(self, row: ErgateJob) -> str:
        return shown_date(row.document().get("submitted_at") or row.date_created)

    @admin.display(description="finished")
    def finished(self, row: ErgateJob) -> str:
        return shown_date(row.document().get("finished_at"))

    @admin.display(description="error")
    def error(self, row: ErgateJob) -> str:
        error = row.document().get("error")
        if not isinstance(error, dict):
            return ""
        message = str(error.get("message", ""))
        short = message if len(message) <= 80 else f"{message[:79]}…"
        return f"{error.get('type', '?')}: {short}"

    # Rows by job id ------------------------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return JobChangeList

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Any:
        """The row of the job `object_id` (a job id; a row number still finds its row, for
        the links Django's own pages make)."""
        queryset = self.get_queryset(request)
        key = unquote(object_id)
        row = queryset.filter(task_id=key).first()
        if row is None and key.isdigit():
            row = queryset.filter(pk=int(key)).first()
        return row

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
                job = job_from_document(row.document())
                wait = waiting_for(ErgateCelery.of().runtime.store, job) if job.parked else None
                context["shown"] = display(job, parked=describe_wait(wait))
            except ValidationError:
                context["unreadable"] = True
            else:
                context["shown"] = display(job)
                context["overdue"] = _overdue(job)
                context["can_act"] = self.has_operate_permission(request)
                context["action_url"] = reverse(
                    f"admin:{self.opts.app_label}_{self.opts.model_name}_act",
                    args=(quote(row.task_id),),
                    current_app=self.admin_site.name,
                )
        return super().change_view(request, object_id, form_url, context)

    def get_urls(self) -> list[URLPattern]:
        act = path(
            "<path:object_id>/act/",
            self.admin_site.admin_view(require_POST(self.act_view)),
            name=f"{self.opts.app_label}_{self.opts.model_name}_act",
        )
        return [act, *super().get_urls()]

    def act_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The job page's Retry and Cancel buttons (POST `action=retry|cancel`): needs the
        change permission; tells how it went on the job page."""
        if not self.has_operate_permission(request):
            raise PermissionDenied
        row = self.get_object(request, object_id)
        if row is None:
            raise Http404(f"No job {unquote(object_id)!r}")
        job_id = str(row.task_id)
        action = request.POST.get("action", "")
        ergate = ErgateCelery.of()
        try:
            if action == "retry":
                job = ergate.retry_job(job_id)
                self.message_user(
                    request, f"Job retried: {job.status.name} at {current_step(job)}."
                )
            elif action == "cancel":
                job = ergate.cancel_job(job_id)
                self.message_user(request, f"Cancel asked: the job is {job.status.name}.")
            else:
                self.message_user(
                    request, f"Unknown action {action[:40]!r}: retry or cancel.", messages.ERROR
                )
        except (JobStateError, JobNotFoundError) as exc:
            self.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(
            reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
                args=(quote(job_id),),
                current_app=self.admin_site.name,
            )
        )

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

    # Django 6.1 says where the actions show (change list or change form) and warns about an
    # override without that parameter; Django before 6.1 has no such parameter.
    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        where = {} if action_location is None else {"action_location": action_location}
        actions: dict[str, Any] = super().get_actions(request, **where)
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


def _overdue(job: Job) -> str | None:
    try:
        settings = ErgateCelery.of().settings
    except ErgateError:
        return None  # no binding in this process: no interval to judge lateness by
    return overdue_note(job, settings)
