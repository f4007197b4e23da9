"""`signal_job`: send a named signal, with a JSON payload, to a job (see `waiting.py`)."""

from __future__ import annotations

import json
from typing import Any

from ergate_celery.exceptions import InvalidInputError, JobStateError, check_signal_name
from ergate_celery.lifecycle.events import Signalled
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.model.json_values import MAX_DEPTH, too_deep
from ergate_celery.operations.reading import check_id, job_not_found, reading
from ergate_celery.transactions import in_django_transaction, on_commit
from ergate_celery.worker.runtime import Runtime

#: The `sender` of the announcements of `signal_job`.
SIGNAL_SENDER = "ergate.signal_job"


def check_payload(payload: Any, max_bytes: int) -> None:
    """Refuse a payload that is not plain JSON or is larger than `max_bytes` encoded."""
    if too_deep(payload):
        raise InvalidInputError(
            f"A signal payload may nest lists and dicts at most {MAX_DEPTH} levels deep; "
            "flatten it, or pass it by reference (a URL or a database key)"
        )
    try:
        encoded = json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"A signal payload must be JSON ({exc}); pass dicts, lists, strings, numbers, "
            "booleans or None"
        ) from None
    if json.loads(encoded) != payload:
        raise InvalidInputError(
            "A signal payload must survive a JSON round trip unchanged (no tuples, no "
            f"non-string keys), got {encoded[:200]}"
        )
    size = len(encoded.encode())
    if size > max_bytes:
        raise InvalidInputError(
            f"The signal payload takes {size} bytes, over ergate_max_payload_bytes="
            f"{max_bytes}; pass large data by reference (a URL or a database key) instead",
            oversized=True,
        )


def signal_job(
    rt: Runtime, job_id: str, name: str, payload: Any = None, *, publish_on_commit: bool = True
) -> Job:
    """Store signal `name` with `payload` on the job and release it if it waits for it;
    returns the job as stored. Bad input, an unknown job or a finished one change nothing.

    Inside a Django transaction the released job's step is published when it commits, unless
    not `publish_on_commit` (a store outside the transaction, as a test's memory store)."""
    check_id(job_id)
    check_signal_name(name)
    check_payload(payload, rt.settings.max_payload_bytes)
    with reading(job_id):
        before, after = rt.apply(job_id, Signalled(name, payload), sender=SIGNAL_SENDER)
    if before is None:
        raise job_not_found(job_id)
    if after is None:
        if before.is_final:
            raise JobStateError(
                f"Job {job_id!r} is already {before.status.name}: signal {name!r} can only "
                "reach a job that has not finished"
            )
        return before  # already received: the first payload stays
    if after.status is JobStatus.QUEUED and before.status is JobStatus.SCHEDULED:
        if publish_on_commit and in_django_transaction():
            on_commit(lambda: rt.publish_current_step(after, SIGNAL_SENDER))
        else:
            rt.publish_current_step(after, SIGNAL_SENDER)
    return after
