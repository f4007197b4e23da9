"""The private Celery app of a `WorkflowTester`: its step tasks are the ones a worker runs,
its result backend is Celery's in-memory one (the memory store keeps the jobs there), and its
broker is `memory://`, which it never connects to: the tester delivers the messages itself."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.backends.cache import CacheBackend

_numbers = itertools.count(1)

#: What a tester sets whatever it is given: no beat entries (the tester releases due jobs
#: itself), and no retried store writes or publishes (they cannot fail here, and a retry
#: would sleep).
FIXED_SETTINGS: dict[str, Any] = {"ergate_beat_enabled": False, "ergate_after_step_attempts": 1}


class _Cache:
    """What Celery's in-memory backend calls on its client, on a dict of its own."""

    def __init__(self) -> None:
        self.entries: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        return self.entries.get(key)

    def get_multi(self, keys: Any) -> dict[Any, Any]:
        return {key: self.entries[key] for key in keys if key in self.entries}

    def set(self, key: Any, value: Any, *args: Any, **kwargs: Any) -> None:
        self.entries[key] = value

    def delete(self, key: Any, *args: Any, **kwargs: Any) -> None:
        self.entries.pop(key, None)

    def incr(self, key: Any, delta: int = 1) -> int:
        value = int(self.entries.get(key, 0)) + delta
        self.entries[key] = str(value)
        return value

    def touch(self, key: Any, expire: Any) -> None:
        """Nothing expires in memory."""


class TesterBackend(CacheBackend):
    """Celery's in-memory result backend (`cache+memory://`) on a cache of its own instead of
    the process's: a tester's jobs are apart from every other app's, none is evicted (the
    process's cache keeps 5,000 entries), and they go when the tester goes."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        kwargs.pop("url", None)
        super().__init__(app, backend="memory://", **kwargs)
        self._client = _Cache()

    @property
    def client(self) -> Any:
        """The tester's own cache."""
        return self._client


def tester_app(settings: Mapping[str, Any] | None) -> Celery:
    """A new private app; `settings` are `ergate_*` settings, as on a worker's app."""
    if settings is not None and not isinstance(settings, Mapping):
        raise TypeError(
            "WorkflowTester(settings=...) takes a dict of ergate_* settings, got "
            f"{type(settings).__name__}"
        )
    given = dict(settings or {})
    if not all(isinstance(name, str) and name.startswith("ergate_") for name in given):
        names = ", ".join(sorted(repr(name) for name in given))
        raise ValueError(
            f"WorkflowTester(settings=...) takes ergate_* settings only, got {names}; the "
            "tester's broker and result backend are its own"
        )
    # No fixups: the app stays the same whether or not Django is configured.
    app = Celery(
        f"ergate-workflow-tester-{next(_numbers)}",
        broker="memory://",
        backend=TesterBackend,
        set_as_current=False,
        fixups=[],
    )
    # Finished jobs stay readable for the whole test; messages are JSON, as on a worker.
    conf = {"result_expires": None, "task_serializer": "json", "accept_content": ["json"]}
    app.conf.update({**conf, **given, **FIXED_SETTINGS})
    return app
