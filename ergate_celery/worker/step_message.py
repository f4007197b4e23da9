"""What a step message carries: where the job is, not the job. The record has the rest.

A message names the job and the run it is for (the step, and how many steps were completed
before it); the worker reads the record to claim the run. Only with `ergate_show_task_args`
on does a message carry the whole job (so logs and Flower show its input), and then, as a
message of a version that always sent the whole job, it is the claim's guess of the record:
a right guess claims in one write, a wrong one costs the read.
"""

from __future__ import annotations

from typing import Any

from ergate_celery.model.job import Job
from ergate_celery.stores.base import job_document

#: The fields of a job a step message carries: enough to name the run and to show it.
MESSAGE_FIELDS: set[str] = {
    "id",
    "workflow_name",
    "status",
    "current_step",
    "current_step_name",
    "steps_completed",
}


def step_message(job: Job, whole: bool = False) -> dict[str, Any]:
    """The one argument of the message of the job's current step: its place, or with `whole`
    (`ergate_show_task_args`) the job as stored."""
    if whole:
        return job_document(job)
    return job.model_dump(mode="json", include=MESSAGE_FIELDS)


def carries_job(payload: Any) -> bool:
    """Whether a step message's argument is the whole job (sent with `ergate_show_task_args`,
    or by a version that always sent it) rather than its place."""
    return not isinstance(payload, dict) or not MESSAGE_FIELDS.issuperset(payload)
