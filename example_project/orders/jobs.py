"""A job as the pages and the JSON endpoint show it: one plain dict for both."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from ergate_celery import ErgateCelery, Job, JobNotFoundError, JobStatus, get_job
from ergate_celery.scheduling.overdue import overdue_note

from .services import CATALOG

#: A job in these states can still be cancelled (PENDING: its transaction has not committed).
CANCELLABLE = (JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.RUNNING)


def stored_job(job_id: str) -> Job | None:
    """The job, or None once its record is gone from the result backend (expired)."""
    try:
        return get_job(job_id)
    except JobNotFoundError:
        return None


def job_state(job_id: str) -> dict[str, Any]:
    """The job's state for display; a job gone from the result backend reads EXPIRED."""
    job = stored_job(job_id)
    if job is None:
        return {
            **dict.fromkeys(FIELDS),
            **_links(job_id),
            "id": job_id,
            "status": "EXPIRED",
            "final": True,
            "cancellable": False,
        }
    return describe(job)


def describe(job: Job) -> dict[str, Any]:
    """JSON-ready fields of `job`."""
    order = job.initial_input_value if isinstance(job.initial_input_value, dict) else {}
    product = CATALOG.get(order.get("sku", ""))
    result = job.last_return_value if job.status is JobStatus.COMPLETED else None
    return {
        **_links(str(job.id)),
        "id": str(job.id),
        "status": job.status.name,
        "final": job.is_final,
        "cancellable": job.status in CANCELLABLE,
        "percent": round(job.percent_completed, 1),
        "step": _current_step(job),
        "steps_completed": job.steps_completed,
        "order": f"{order.get('quantity', '?')} × {product.name if product else '?'}",
        "outcome": result.get("outcome") if isinstance(result, dict) else None,
        "error": f"{job.error.type}: {job.error.message}" if job.error else None,
        # A scheduled job past its time that beat has not released.
        "overdue": overdue_note(job, ErgateCelery.of().settings),
        "requested_start_time": _iso(job.requested_start_time),
        "submitted_at": _iso(job.submitted_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


#: Every key `describe` returns.
FIELDS = (
    "url",
    "json_url",
    "id",
    "status",
    "final",
    "cancellable",
    "percent",
    "step",
    "steps_completed",
    "order",
    "outcome",
    "error",
    "overdue",
    "requested_start_time",
    "submitted_at",
    "started_at",
    "finished_at",
)


def _current_step(job: Job) -> str | None:
    if job.is_final:
        return None
    workflow = ErgateCelery.of().workflow(job.workflow_name)
    return workflow[job.current_step].name if job.current_step < len(workflow) else None


def _links(job_id: str) -> dict[str, str]:
    return {
        "url": reverse("orders:job_detail", args=[job_id]),
        "json_url": reverse("orders:job_json", args=[job_id]),
    }


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None
