"""`signal_job`: send a named signal, with a JSON payload, to a job (see `waiting.py`)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from ergate_celery.exceptions import InvalidInputError, JobStateError, check_signal_name
from ergate_celery.lifecycle.events import Signalled
from ergate_celery.lifecycle.transitions import queued_by
from ergate_celery.model.job import Job
from ergate_celery.model.json_values import MAX_DEPTH, non_json, too_deep
from ergate_celery.operations.queueing import queue_step, queued
from ergate_celery.operations.reading import check_id, job_not_found
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
        # Where, and of what type, never the value: payloads may hold personal data.
        where = non_json(payload, "payload") or "payload: it changes in a JSON round trip"
        raise InvalidInputError(
            "A signal payload must survive a JSON round trip unchanged (no tuples, no "
            f"non-string keys): {where}"
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

    A repeat of a signal whose release was written but not published (its caller was killed
    in between) publishes the job's step (see `queueing`).
    Inside a Django transaction the signal is written and the job released when it commits
    (see `queueing`), unless not `publish_on_commit` (a store outside it, as a tester's)."""
    check_id(job_id)
    check_signal_name(name)
    check_payload(payload, rt.settings.max_payload_bytes)
    signal = Signalled(name, payload, uuid.uuid4().hex)
    return queue_step(
        rt,
        job_id,
        signal,
        SIGNAL_SENDER,
        lambda before, after: _signalled(job_id, name, before, after),
        publish_on_commit=publish_on_commit,
    )


def _signalled(
    job_id: str, name: str, before: Job | None, after: Job | None
) -> tuple[Job, Job | None]:
    if after is not None:
        # Released by this signal: its mark is new (before is None when the write was found
        # by its token after a lost reply).
        mark = after.queued_by
        released = queued_by(after, f"signal {name}") and (
            before is None or before.queued_by != mark
        )
        return after, queued(after) if released else None
    if before is None:
        raise job_not_found(job_id)
    if before.is_final:
        raise JobStateError(
            f"Job {job_id!r} is already {before.status.name}: signal {name!r} can only "
            "reach a job that has not finished"
        )
    # Already received: the first payload stays; a release left unpublished is finished.
    return before, queued(before) if queued_by(before, f"signal {name}") else None
