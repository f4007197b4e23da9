"""Records and `ergate_max_payload_bytes`: what a step may bring a record to, and how the
lifecycle's own writes always fit.

A step's outcome (its return value, with the timing of its run) may take the record to
`OUTCOME_ROOM`-th short of the limit: the rest is room for what the lifecycle writes
afterwards — a claim and its lease, the sweep's notes, a cancel, a retry. Should one of those
still not fit (a tiny limit), the record's bookkeeping lists are cut to their latest entries,
with a note; a FAILED record, which must always be storable, drops the job's values instead.
"""

from __future__ import annotations

from typing import Final

from ergate_celery.exceptions import InvalidInputError
from ergate_celery.model.job import Job, JobError
from ergate_celery.model.job_status import JobStatus

#: A step's outcome may take all but 1/OUTCOME_ROOM of `ergate_max_payload_bytes`.
OUTCOME_ROOM: Final = 20
#: What is kept of a traceback, a message, and of the timings and recoveries lists, in a
#: failure record stored `without_values`.
_KEPT_CHARS: Final = 4000
_KEPT_LINES: Final = 20
#: The entries kept of a failure record's earlier errors.
_TRIMMED_TO: Final = 2


def check_size(job: Job, encoded: bytes | str, max_bytes: int) -> None:
    """Refuse a record larger than `max_bytes` (`ergate_max_payload_bytes`, or less)."""
    size = len(encoded)
    if size > max_bytes:
        raise InvalidInputError(
            f"Job {job.id!r} would take {size} bytes, over ergate_max_payload_bytes="
            f"{max_bytes}; pass large data by reference (a URL or a database key) instead",
            oversized=True,
        )


def outcome_limit(max_bytes: int) -> int:
    """The size a step's outcome may bring a record to (see the module's docstring)."""
    return max_bytes - max_bytes // OUTCOME_ROOM


def is_outcome(before: Job, new: Job) -> bool:
    """Whether writing `new` over `before` stores a step's outcome (a new `finished_by`)."""
    return new.finished_by is not None and new.finished_by != before.finished_by


def fitted(new: Job, outcome_limit: int | None, exc: InvalidInputError) -> Job:
    """`new`, made to fit after `exc` said it is too large. A step's outcome (written with
    its `outcome_limit`) is not cut but refused: it fails the step, as its value is the
    step's; the FAILED record then fits."""
    if new.status is JobStatus.FAILED:
        return without_values(new)
    if outcome_limit is not None:
        raise InvalidInputError(
            f"{exc} (a step's outcome may take up to {outcome_limit} bytes: the rest is room "
            "for the job's own bookkeeping)",
            oversized=True,
        ) from None
    return trimmed(new)


def trimmed(job: Job) -> Job:
    """`job` with its bookkeeping cut to the least (the last timing and earlier error, the
    error's traceback's end) and a note saying so in place of the sweep's; its values are
    kept."""
    note = "the record was at ergate_max_payload_bytes: older timings, notes and errors were cut"
    error = job.error
    if error is not None and error.traceback is not None:
        error = error.model_copy(update={"traceback": error.traceback[-_KEPT_CHARS:]})
    return job.model_copy(
        update={
            "timings": job.timings[-1:],
            "recoveries": [note],
            "errors": [past.model_copy(update={"traceback": None}) for past in job.errors[-1:]],
            "error": error,
        }
    )


def without_values(failed: Job) -> Job:
    """A FAILED record too large to store, made small: its input, user context and last
    return value are dropped (and its error says so), long texts and lists are cut."""
    error = failed.error or JobError(type="PayloadTooLarge", message="The job failed")
    note = (
        " [the record was over ergate_max_payload_bytes: its initial_input_value, "
        "user_context, last_return_value and signals were dropped to store this failure]"
    )
    trace = error.traceback
    return failed.model_copy(
        update={
            "initial_input_value": None,
            "user_context": None,
            "last_return_value": None,
            "signals": {},
            "timings": failed.timings[-_KEPT_LINES:],
            "recoveries": failed.recoveries[-_KEPT_LINES:],
            "errors": [
                past.model_copy(update={"message": past.message[:_KEPT_CHARS], "traceback": None})
                for past in failed.errors[-_TRIMMED_TO:]
            ],
            "error": error.model_copy(
                update={
                    "message": error.message[:_KEPT_CHARS] + note,
                    "traceback": trace[-_KEPT_CHARS:] if trace is not None else None,
                }
            ),
        }
    )
