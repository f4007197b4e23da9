"""A failure that always fits: the record of a FAILED job made small enough to store when it
is over `ergate_max_payload_bytes`, so that every job can reach a final status."""

from __future__ import annotations

from typing import Final

from ergate_celery.model.job import Job, JobError

#: What is kept of a traceback, a message, and of the timings and recoveries lists, in a
#: failure record stored `without_values`.
_KEPT_CHARS: Final = 4000
_KEPT_LINES: Final = 20


def without_values(failed: Job) -> Job:
    """A FAILED record too large to store, made small: its input, user context and last
    return value are dropped (and its error says so), long texts and lists are cut."""
    error = failed.error or JobError(type="PayloadTooLarge", message="The job failed")
    note = (
        " [the record was over ergate_max_payload_bytes: its initial_input_value, "
        "user_context and last_return_value were dropped to store this failure]"
    )
    trace = error.traceback
    return failed.model_copy(
        update={
            "initial_input_value": None,
            "user_context": None,
            "last_return_value": None,
            "timings": failed.timings[-_KEPT_LINES:],
            "recoveries": failed.recoveries[-_KEPT_LINES:],
            "error": error.model_copy(
                update={
                    "message": error.message[:_KEPT_CHARS] + note,
                    "traceback": trace[-_KEPT_CHARS:] if trace is not None else None,
                }
            ),
        }
    )
