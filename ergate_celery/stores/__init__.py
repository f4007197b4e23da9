"""Pick the job store that matches the Celery app's result backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery.backends.cache import CacheBackend

from ergate_celery.exceptions import UnsupportedBackendError
from ergate_celery.stores.base import (
    ACTIVE,
    SCHEDULED,
    BaseJobStore,
    Change,
    IndexEntry,
    JobStore,
    Updated,
)

__all__ = [
    "ACTIVE",
    "SCHEDULED",
    "BaseJobStore",
    "Change",
    "IndexEntry",
    "JobStore",
    "Updated",
    "store_for_backend",
]

_SUPPORTED = (
    "set result_backend to redis://..., db+postgresql://..., db+sqlite:///... or django-db "
    "(django-celery-results), or cache+memory:// in tests that run in one process"
)


def store_for_backend(
    backend: Any,
    max_bytes: int,
    expires_by_status: Mapping[str, int] | None = None,
    index_name: str = "",
) -> JobStore:
    """The store for `backend`, or `UnsupportedBackendError` saying which backends work.

    `index_name` names the app's job index where the backend is shared by apps (Redis, and
    the memory cache of a process).
    """
    module = type(backend).__module__
    if module == "celery.backends.redis":
        from ergate_celery.stores.redis import RedisJobStore

        return RedisJobStore(backend, max_bytes, expires_by_status, index_name)
    if module.startswith("celery.backends.database"):
        if str(backend.url).startswith("sqlite"):
            from ergate_celery.stores.sqlite_store import SQLiteJobStore

            return SQLiteJobStore(backend, max_bytes, expires_by_status)
        from ergate_celery.stores.sqlalchemy import SQLAlchemyJobStore

        return SQLAlchemyJobStore(backend, max_bytes, expires_by_status)
    if module.startswith("django_celery_results.backends.database"):
        from ergate_celery.stores.django import DjangoJobStore

        return DjangoJobStore(backend, max_bytes, expires_by_status)
    if isinstance(backend, CacheBackend):
        kind = vars(backend).get("backend")  # the scheme of its URL (untyped in the stubs)
        if kind == "memory":
            from ergate_celery.stores.memory import MemoryJobStore

            return MemoryJobStore(backend, max_bytes, expires_by_status, index_name)
        raise UnsupportedBackendError(
            f"ergate_celery keeps jobs in the result backend, and the cache backend on "
            f"{kind}:// evicts and expires entries whatever they hold, "
            f"so it would lose jobs that have not finished; {_SUPPORTED}"
        )
    raise UnsupportedBackendError(
        f"ergate_celery keeps jobs in the result backend, and {type(backend).__name__} "
        f"({module}) is not supported; {_SUPPORTED}"
    )
