"""The staff console: list, filter, retry and cancel jobs, pause and resume workflows, and see
each workflow's graph, on every result backend (it reads `list_jobs`, not the database).

Permissions are the admin's for the job model: every page needs staff status and the `view`
permission on ergate jobs (`ergate_celery.view_ergatejob`); every action (retry, cancel,
pause, resume) needs the `change` permission (`ergate_celery.change_ergatejob`). Anyone else
gets 403.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods

from ergate_celery.binding import ErgateCelery
from ergate_celery.contrib.django.job_display import current_step, display
from ergate_celery.exceptions import (
    InvalidInputError,
    JobNotFoundError,
    JobStateError,
    UnknownStepError,
    UnknownWorkflowError,
)
from ergate_celery.model.graph import edges, mermaid
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.model.workflow import Workflow
from ergate_celery.operations.flow import describe_wait, waiting_for
from ergate_celery.operations.listing import parse_moment
from ergate_celery.scheduling.overdue import overdue_note
from ergate_celery.stores.listing import JobPage

T = TypeVar("T")
#: A page's action: given the app and what the page shows (a job id, a workflow name), it
#: changes that and returns what to tell.
Action = Callable[[ErgateCelery, str], str]

#: Jobs per page of the list.
PAGE_SIZE = 50
#: Needed to see any page of the console (the admin's view permission on jobs).
VIEW_PERMISSION = "ergate_celery.view_ergatejob"
#: Needed for every action: retry, cancel, pause, resume (the admin's change permission).
CHANGE_PERMISSION = "ergate_celery.change_ergatejob"

View = Callable[..., HttpResponse]


def console_page(view: View) -> View:
    """Staff only (others are sent to the admin's login); 403 without the view permission,
    and for a POST without the change permission."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = request.user
        if not user.has_perm(VIEW_PERMISSION):
            raise PermissionDenied(f"The ergate console needs the {VIEW_PERMISSION} permission")
        if request.method not in ("GET", "HEAD") and not user.has_perm(CHANGE_PERMISSION):
            raise PermissionDenied(f"Changing jobs needs the {CHANGE_PERMISSION} permission")
        return view(request, *args, **kwargs)

    guarded_for_staff: View = staff_member_required(guarded)
    return guarded_for_staff


def _can_act(request: HttpRequest) -> bool:
    return bool(request.user.has_perm(CHANGE_PERMISSION))


@console_page
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    """Jobs newest first, filtered by status, workflow, since and tag, a page at a time."""
    ergate = ErgateCelery.of()
    given = {key: request.GET.get(key, "").strip() for key in ("status", "workflow", "since")}
    given["tag"] = request.GET.get("tag", "").strip()
    cursor = request.GET.get("cursor") or None
    context: dict[str, Any] = {
        "filters": given,
        "statuses": [status.name for status in JobStatus],
        "workflows": sorted(ergate.workflows),
        "paused": ergate.paused_workflows(),
        "rows": [],
        "next_url": None,
        "error": None,
        "first_page": cursor is None,
    }
    try:
        page = _list(ergate, given, cursor)
    except (InvalidInputError, UnknownWorkflowError) as exc:
        context["error"] = str(exc)
        return render(request, "ergate_celery/console/job_list.html", context, status=400)
    context["rows"] = [
        {
            "job": job,
            "status": job.status.name,
            "percent": round(job.percent_completed, 1),
            "step": current_step(job),
            "overdue": overdue_note(job, ergate.settings),
        }
        for job in page.jobs
    ]
    if page.next_cursor is not None:
        query = {key: value for key, value in given.items() if value}
        context["next_url"] = f"?{urlencode({**query, 'cursor': page.next_cursor})}"
    return render(request, "ergate_celery/console/job_list.html", context)


def _list(ergate: ErgateCelery, given: dict[str, str], cursor: str | None) -> JobPage:
    tags = None
    if given["tag"]:
        key, equals, value = given["tag"].partition("=")
        if not equals or not key:
            raise InvalidInputError(f"tag {given['tag']!r} is not KEY=VALUE, e.g. order=A-17")
        tags = {key.strip(): value.strip()}
    return ergate.list_jobs(
        status=given["status"] or None,
        workflow=given["workflow"] or None,
        since=parse_since(given["since"]),
        tags=tags,
        limit=PAGE_SIZE,
        cursor=cursor,
    )


def parse_since(text: str) -> datetime | None:
    """`1h` (30s, 15m, 2d, 1w: that long ago) or an ISO date or time (naive is UTC)."""
    return parse_moment("since", text, datetime.now(UTC), ago=True) if text else None


@console_page
@require_http_methods(["GET", "POST"])
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    """One job: status, progress, error, timeline; POST `action=retry|cancel` changes it."""
    return _page(request, job_id, ErgateCelery.get_job, _JOB_ACTIONS, _show_job)


#: Children a job's page lists (`celery ergate list --parent` pages through all).
_CHILDREN_SHOWN = 100


def _show_job(request: HttpRequest, ergate: ErgateCelery, job: Job) -> HttpResponse:
    children = None
    if job.fan_out is not None:
        page = ergate.list_jobs(parent=str(job.id), limit=_CHILDREN_SHOWN)
        children = {"jobs": page.jobs, "more": page.next_cursor is not None}
    parked = describe_wait(waiting_for(ergate.runtime.store, job))
    context = {
        "shown": display(job, parked=parked),
        "console": True,
        "overdue": overdue_note(job, ergate.settings),
        "action_url": reverse("ergate_celery:job_detail", args=[str(job.id)]),
        "can_act": _can_act(request),
        "children": children,
    }
    return render(request, "ergate_celery/console/job_detail.html", context)


def _retry(ergate: ErgateCelery, job_id: str) -> str:
    job = ergate.retry_job(job_id)
    return f"Job retried: {job.status.name} at {current_step(job)}."


def _cancel(ergate: ErgateCelery, job_id: str) -> str:
    job = ergate.cancel_job(job_id)
    return f"Cancel asked: the job is {job.status.name}."


#: What a job page's POST `action` does: each returns what to tell.
_JOB_ACTIONS: dict[str, Action] = {"retry": _retry, "cancel": _cancel}


@console_page
@require_GET
def workflow_list(request: HttpRequest) -> HttpResponse:
    """Every registered workflow, paused or running, with its steps."""
    ergate = ErgateCelery.of()
    paused = ergate.paused_workflows()
    rows = [
        {"name": name, "steps": len(workflow), "paused": name in paused}
        for name, workflow in sorted(ergate.workflows.items())
    ]
    return render(request, "ergate_celery/console/workflow_list.html", {"rows": rows})


@console_page
@require_http_methods(["GET", "POST"])
def workflow_detail(request: HttpRequest, name: str) -> HttpResponse:
    """A workflow's steps and edges, its Mermaid source; POST `action=pause|resume`."""
    return _page(request, name, ErgateCelery.workflow, _WORKFLOW_ACTIONS, _show_workflow)


def _show_workflow(request: HttpRequest, ergate: ErgateCelery, workflow: Workflow) -> HttpResponse:
    name = workflow.unique_name
    steps = [step.name for step in workflow]
    context = {
        "name": name,
        "paused": name in ergate.paused_workflows(),
        "steps": [{"index": index, "name": step} for index, step in enumerate(steps)],
        "edges": [
            {
                "source": steps[edge.source],
                "target": "END" if edge.target is None else steps[edge.target],
                "label": edge.label,
                "waits": edge.waits,
            }
            for edge in edges(workflow)
        ],
        "mermaid": mermaid(workflow),
        "jobs_url": f"{reverse('ergate_celery:job_list')}?{urlencode({'workflow': name})}",
        "can_act": _can_act(request),
    }
    return render(request, "ergate_celery/console/workflow_detail.html", context)


def _pause(ergate: ErgateCelery, name: str) -> str:
    ergate.pause_workflow(name)
    return (
        f"{name} paused: jobs submitted from now on wait until resumed; steps already queued "
        f"stop within {ergate.settings.pause_refresh:g} s; running steps finish."
    )


def _resume(ergate: ErgateCelery, name: str) -> str:
    return f"{name} resumed; {ergate.resume_workflow(name)} parked jobs sent on."


#: What a workflow page's POST `action` does: each returns what to tell.
_WORKFLOW_ACTIONS: dict[str, Action] = {"pause": _pause, "resume": _resume}


def _page(
    request: HttpRequest,
    key: str,
    find: Callable[[ErgateCelery, str], T],
    actions: Mapping[str, Action],
    show: Callable[[HttpRequest, ErgateCelery, T], HttpResponse],
) -> HttpResponse:
    """The page of what `find` finds at `key` (a 404 saying what is not there): `show` for
    a GET, one of `actions` done to it for a POST."""
    ergate = ErgateCelery.of()
    try:
        found = find(ergate, key)
    except (JobNotFoundError, UnknownWorkflowError) as exc:
        raise Http404(str(exc)) from None
    if request.method == "POST":
        return _act(request, ergate, key, actions)
    return show(request, ergate, found)


def _act(
    request: HttpRequest, ergate: ErgateCelery, key: str, actions: Mapping[str, Action]
) -> HttpResponse:
    """Do the POSTed `action` to `key` and tell how it went, then show the page again
    (POST/redirect/GET)."""
    action = request.POST.get("action", "")
    act = actions.get(action)
    if act is None:
        choices = " or ".join(actions)
        _say(request, messages.ERROR, f"Unknown action {action[:40]!r}: {choices}.")
    else:
        try:
            _say(request, messages.SUCCESS, act(ergate, key))
        except (JobStateError, JobNotFoundError, UnknownStepError) as exc:
            _say(request, messages.ERROR, str(exc))
    return HttpResponseRedirect(request.path)


def _say(request: HttpRequest, level: int, text: str) -> None:
    # Without the messages app the redirect still shows the changed job.
    messages.add_message(request, level, text, fail_silently=True)
