"""The claim of a step in one round trip on Redis (the CLAIM script of redis_scripts.py): its
arguments, formatted exactly as pydantic writes the job's fields, and the job as it was
before the claim, rebuilt from the old values the script returns."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from ergate_celery.lifecycle.events import Claim
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus

logger = logging.getLogger(__name__)

_TEXT: TypeAdapter[str | None] = TypeAdapter(str | None)
_TIME: TypeAdapter[datetime | None] = TypeAdapter(datetime | None)


def claim_arguments(job_id: str, claim: Claim, now: datetime, score: float) -> list[Any]:
    """The script's ARGV for `claim` of job `job_id` at `now`, indexed at `score`."""
    return [
        _TEXT.dump_json(job_id),
        _TEXT.dump_json(claim.workflow_name),
        _TEXT.dump_json(claim.step_name),
        str(claim.steps_completed),
        str(claim.step_index),
        _TEXT.dump_json(claim.workflow_version),
        _TEXT.dump_json(claim.token),
        _TIME.dump_json(now),
        _TIME.dump_json(claim.lease_until),
        score,
        job_id,
    ]


def before_claim(after: Job, old: list[bytes]) -> Job:
    """The job as it was stored before the script claimed it as `after`: the fields the claim
    changed, as the script found them (in its reply's order)."""
    step, version, claim, lease, attempt, started, step_started, queued_by = old
    return after.model_copy(
        update={
            "status": JobStatus.QUEUED,
            "current_step": int(step),
            "workflow_version": _TEXT.validate_json(version),
            "claim": _TEXT.validate_json(claim),
            "lease_until": _TIME.validate_json(lease),
            "attempt": int(attempt),
            "started_at": _TIME.validate_json(started),
            "step_started_at": _TIME.validate_json(step_started),
            "queued_by": _TEXT.validate_json(queued_by),
        }
    )
