"""`Concurrency(limit, key=None)`: at most `limit` jobs of a workflow in progress per key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ergate_celery.exceptions import InvalidDefinitionError, InvalidInputError

if TYPE_CHECKING:
    from ergate_celery.model.job import Job

#: The longest concurrency key a job may have (it names a record in the store).
MAX_KEY_LENGTH = 200


@dataclass(frozen=True)
class Concurrency:
    """At most `limit` jobs per key are in progress, from their first step's claim until
    they are final (waiting included), across every worker.

    `key` is a function of the job (its `user_context`, `initial_input_value`, `tags`...)
    giving the key as a string; None puts every job of the workflow under one key. It is
    called once, when the job is submitted, and the key is stored on the job.
    """

    limit: int
    key: Callable[[Job], Any] | None = None

    def __post_init__(self) -> None:
        limit = self.limit
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidDefinitionError(
                f"Concurrency limit must be a whole number of 1 or more, got {limit!r}"
            )
        if self.key is not None and not callable(self.key):
            raise InvalidDefinitionError(
                f"Concurrency key must be a function of the job (or None), got {self.key!r}"
            )

    def key_of(self, job: Job) -> str:
        """The key of `job`, or `InvalidInputError` saying why the job has none."""
        if self.key is None:
            return "*"
        try:
            key = self.key(job)
        except Exception as exc:
            raise InvalidInputError(
                f"The concurrency key of workflow {job.workflow_name!r} could not be computed "
                f"for this job ({type(exc).__name__}: {exc}); pass the user_context or input "
                "the key function reads"
            ) from None
        if key is None or isinstance(key, bool) or not isinstance(key, str | int):
            raise InvalidInputError(
                f"The concurrency key function of workflow {job.workflow_name!r} returned "
                f"{key!r}; it must return a string (or a whole number)"
            )
        text = str(key)
        if not 0 < len(text) <= MAX_KEY_LENGTH or not text.isprintable():
            raise InvalidInputError(
                f"Concurrency key {text[:120]!r} of workflow {job.workflow_name!r} must be 1 "
                f"to {MAX_KEY_LENGTH} printable characters"
            )
        return text


def slot_name(workflow_name: str, key: str) -> str:
    """The name under which the store keeps the slots of `key` of a workflow."""
    return f"{workflow_name}/{key}"
