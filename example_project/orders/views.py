"""Place orders, follow their jobs, cancel them. A user sees only their own orders."""

from __future__ import annotations

import json
from uuid import UUID

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.timezone import now
from django.views.decorators.http import require_GET, require_POST
from ergate_celery import (
    InvalidInputError,
    JobNotFoundError,
    JobStateError,
    JobStatus,
    cancel_job,
    get_job,
    signal_job,
    submit_job,
)

from .forms import OrderForm
from .jobs import describe, job_state, stored_job
from .models import OrderJob

#: How many of a user's latest orders the list shows.
LIST_LIMIT = 50


def _own(request: HttpRequest, job_id: UUID) -> OrderJob:
    # Another user's job id is a 404, exactly like an id that does not exist.
    link: OrderJob = get_object_or_404(OrderJob, user=request.user, job_id=str(job_id))
    return link


@login_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    links = OrderJob.objects.filter(user=request.user)[:LIST_LIMIT]
    jobs = [job_state(link.job_id) for link in links]
    return render(request, "orders/job_list.html", {"jobs": jobs})


@login_required
def order_new(request: HttpRequest) -> HttpResponse:
    form = OrderForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = request.user
        try:
            # The job's first step is published when this transaction commits: a worker never
            # sees a job whose OrderJob row is missing, and a rollback publishes nothing.
            with transaction.atomic():
                job = submit_job(
                    "process_order",
                    initial_input_value=form.order(),
                    user_context={
                        "user_id": user.pk,
                        "username": user.get_username(),
                        "email": getattr(user, "email", ""),
                    },
                    requested_start_time=form.cleaned_data["start_at"],
                )
                OrderJob.objects.create(user=user, job_id=job.id)
        except InvalidInputError as exc:
            form.add_error(None, str(exc))
        else:
            later = job.requested_start_time is not None and job.requested_start_time > now()
            when = "scheduled" if later else "placed"
            messages.success(request, f"Order {when}.")
            return redirect("orders:job_detail", job_id=job.id)
    return render(request, "orders/order_form.html", {"form": form})


@login_required
@require_GET
def job_detail(request: HttpRequest, job_id: UUID) -> HttpResponse:
    link = _own(request, job_id)
    job = stored_job(link.job_id)
    state = describe(job) if job is not None else job_state(link.job_id)
    context = {"job": job, "state": state, "link": link}
    if job is not None:
        # Shown as the JSON the job holds, not as a Python repr.
        context["input_json"] = json.dumps(job.initial_input_value, indent=2, ensure_ascii=False)
        context["result_json"] = json.dumps(job.last_return_value, indent=2, ensure_ascii=False)
    return render(request, "orders/job_detail.html", context)


@login_required
@require_GET
def job_json(request: HttpRequest, job_id: UUID) -> JsonResponse:
    return JsonResponse(job_state(_own(request, job_id).job_id))


@login_required
@require_POST
def job_cancel(request: HttpRequest, job_id: UUID) -> HttpResponse:
    link = _own(request, job_id)
    try:
        before = get_job(link.job_id)
        job = before if before.is_final else cancel_job(link.job_id)
    except JobNotFoundError:
        messages.error(request, "This job's record has expired.")
    else:
        if job.status is JobStatus.CANCELLED and not before.is_final:
            messages.info(request, "Job cancelled.")
        elif job.status is JobStatus.CANCELLING:
            messages.info(request, "Cancelling: the job stops when its running step ends.")
        else:
            messages.warning(request, f"The job had already ended: {job.status.name}.")
    return redirect("orders:job_detail", job_id=link.job_id)


@staff_member_required
@require_GET
def approvals(request: HttpRequest) -> HttpResponse:
    """Staff: the orders waiting for approval, each with Approve and Reject buttons."""
    waiting = []
    for link in OrderJob.objects.select_related("user")[:LIST_LIMIT]:
        job = stored_job(link.job_id)
        if job is None:  # its record has expired
            continue
        if job.status is JobStatus.SCHEDULED and job.wait and job.wait.signal == "approved":
            waiting.append({**describe(job), "user": link.user, "until": job.wait.until})
    return render(request, "orders/approvals.html", {"jobs": waiting})


@staff_member_required
@require_POST
def approval_decide(request: HttpRequest, job_id: UUID) -> HttpResponse:
    """Staff: approve or reject a waiting order; its job goes on at once."""
    approved = request.POST.get("decision") == "approve"
    payload = {"approved": approved, "by": request.user.get_username()}
    try:
        signal_job(str(job_id), "approved", payload)
    except (JobNotFoundError, JobStateError) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Order approved." if approved else "Order rejected.")
    return redirect("orders:approvals")
