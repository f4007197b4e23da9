"""A job's row in a task-result table, as both SQL stores write it: Celery's `celery_taskmeta`
(the SQLAlchemy store) and django-celery-results' `TaskResult` (the django-db store).

No database library is imported here, so each store loads only its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from ergate_celery.model.job import Job
from ergate_celery.stores.base import BaseJobStore, seconds
from ergate_celery.stores.oversized import check_size


class NewJob(NamedTuple):
    """One job to create in a batch (sql_batch.py, django_postgres.py): its row's columns
    (or INSERT parameters), its index entry (kind, at) or None, its listing row (workflow,
    status, submitted_at) or None, and its tags (stored with its listing row)."""

    row: Mapping[str, Any]
    entry: tuple[str, Any] | None
    listed: tuple[str, str, Any] | None
    tags: Mapping[str, str]


def row_columns(job: Job, encoded: bytes | str, max_bytes: int) -> dict[str, Any]:
    """The columns both tables have for `job` stored as `encoded` (status, result, traceback);
    `InvalidInputError` when `encoded` is over `max_bytes`."""
    check_size(job, encoded, max_bytes)
    return {
        "status": job.status.name,
        "result": encoded,
        "traceback": job.error.traceback if job.error else None,
    }


def date_done(store: BaseJobStore[Any], job: Job) -> datetime | None:
    """The `date_done` that makes Celery's `backend_cleanup` (rows whose date_done is older
    than `result_expires`) remove the row of `job` when `store.expires_after` says; None
    while the row must not expire, or when nothing expires."""
    kept = store.expires_after(job)
    if kept is None:
        return None
    default = seconds(store.backend.expires)
    now = datetime.now(UTC)
    return now + timedelta(seconds=kept - default) if default else now


def write_parameters(
    params: Mapping[str, Any],
    entry: tuple[str, Any] | None,
    relist: str | None,
    summary: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The parameters of a one-statement job write on PostgreSQL (sql_postgres.py,
    django_postgres.py): the row's (`params`), its index `entry` (`i_kind`, `i_at`) when
    kept, its listing status (`l_status`) when it changed, and the step's summary row (its
    `s_<name>` parameters) when written."""
    values = dict(params)
    if entry is not None:
        values["i_kind"], values["i_at"] = entry
    if relist is not None:
        values["l_status"] = relist
    if summary is not None:
        values.update(summary)
    return values


def create_parameters(
    row: Mapping[str, Any],
    entry: tuple[str, Any] | None,
    listed: tuple[str, str, Any] | None,
    tags: Mapping[str, str],
) -> dict[str, Any]:
    """The parameters of a one-statement job creation on PostgreSQL: the row's (`row`), its
    index `entry` (`i_kind`, `i_at`), its listing row (`l_workflow`, `l_status`,
    `l_submitted_at`), each all None when there is none, and its tags (`t_keys`,
    `t_values`)."""
    values = dict(row)
    values["i_kind"], values["i_at"] = entry or (None, None)
    values["l_workflow"], values["l_status"], values["l_submitted_at"] = listed or (
        None,
        None,
        None,
    )
    values["t_keys"], values["t_values"] = list(tags), list(tags.values())
    return values


#: The other tables' rows of a batch of new jobs: each column's parameter is `<prefix>_<name>`.
BATCH_ROWS = (
    ("i", ("job_id", "kind", "at")),
    ("l", ("job_id", "workflow", "status", "submitted_at")),
    ("t", ("job_id", "key", "value")),
)


def batch_parameters(
    jobs: Sequence[NewJob], columns: Sequence[str], key: str = "{}"
) -> dict[str, list[Any]]:
    """The parameters of a one-statement creation of `jobs` on PostgreSQL (sql_batch.py,
    django_postgres.py): one list per column, `r_<column>` for the rows' `columns` (each
    read from a row under `key` formatted with its name), and those of `BATCH_ROWS`."""
    params: dict[str, list[Any]] = {f"r_{name}": [] for name in columns}
    for prefix, names in BATCH_ROWS:
        params.update({f"{prefix}_{name}": [] for name in names})

    def add(prefix: str, values: tuple[Any, ...]) -> None:
        for name, value in zip(dict(BATCH_ROWS)[prefix], values, strict=True):
            params[f"{prefix}_{name}"].append(value)

    for job in jobs:
        for name in columns:
            params[f"r_{name}"].append(job.row[key.format(name)])
        job_id = job.row[key.format("task_id")]
        if job.entry is not None:
            add("i", (job_id, *job.entry))
        if job.listed is not None:
            add("l", (job_id, *job.listed))
            for pair in job.tags.items():
                add("t", (job_id, *pair))
    return params
