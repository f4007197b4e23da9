"""Why a parked job waits, as `show`, `list --json`, the console and the admin say it: its
workflow is paused, or its concurrency key is at its limit (with how many jobs are ahead)."""

from __future__ import annotations

from typing import Any

from ergate_celery.model.concurrency import slot_name
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.stores import JobStore


def waiting_for(store: JobStore, job: Job) -> dict[str, Any] | None:
    """What a parked job waits for, or None when it is not parked: `{"reason": "paused"}`,
    or `{"reason": "concurrency", "key": ..., "ahead": n, "limit": n}` (`ahead`: the jobs of
    its key that start before it)."""
    if job.status is not JobStatus.QUEUED or not job.parked:
        return None
    if not job.waiting_for_slot or job.concurrency_key is None:
        return {"reason": "paused"}
    slots = store.slots(slot_name(job.workflow_name, job.concurrency_key))
    ahead = slots.ahead_of(str(job.id))
    return {
        "reason": "concurrency",
        "key": job.concurrency_key,
        "ahead": 0 if ahead is None else ahead,
        "limit": slots.limit,
    }


def describe_wait(wait: dict[str, Any] | None) -> str | None:
    """`waiting_for` in one line."""
    if wait is None:
        return None
    if wait["reason"] == "paused":
        return "parked: its workflow is paused; resume_workflow starts it"
    ahead = wait["ahead"]
    return (
        f"waits for a concurrency slot of key {wait['key']!r} "
        f"({wait['limit']} in progress, {ahead} job{'s' if ahead != 1 else ''} ahead)"
    )
