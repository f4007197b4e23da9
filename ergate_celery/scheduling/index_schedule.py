"""Beat schedules that fire only when the job index says there is work.

Beat calls `is_due` on every tick; a plain interval schedule would send the release and sweep
tasks every interval whether or not anything is due, which fills Flower and the worker log.
`IndexSchedule` reads the head of one index instead (one range query of one entry) and fires
only when that entry is due; otherwise it asks beat to look again in at most its interval, or
sooner when the head entry falls due before that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from weakref import WeakKeyDictionary

from celery.schedules import schedstate, schedule

from ergate_celery.exceptions import ErgateError
from ergate_celery.stores import JobStore

logger = logging.getLogger(__name__)

#: The end of the index range read for its head entry: every entry is before it.
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)

#: The job store of each app whose beat entries were installed (see `serve`).
_stores: WeakKeyDictionary[Any, Callable[[], JobStore]] = WeakKeyDictionary()


def serve(app: Any, store: Callable[[], JobStore]) -> None:
    """Have the schedules of `app` read the index of `store()`.

    Beat's shelve pickles its entries and reads them back after each sync; a schedule read
    back has only its app, so the store is handed in here, once, when the entries are
    installed.
    """
    _stores[app] = store


class IndexSchedule(schedule):
    """Due when the earliest entry of index `kind` is at least `age` seconds old.

    `store` returns the job store to read (default: the one served for the app). Beat
    asks at most every `run_every` seconds. When the index cannot be read, the entry fires
    (the task reads the index again, and logs what fails there) and one WARNING is logged
    until a read succeeds again.
    """

    def __init__(
        self,
        kind: str,
        run_every: float | timedelta,
        age: float = 0.0,
        app: Any = None,
        store: Callable[[], JobStore] | None = None,
    ) -> None:
        super().__init__(run_every, app=app)
        self.every = run_every if isinstance(run_every, timedelta) else timedelta(seconds=run_every)
        self.kind = kind
        self.age = timedelta(seconds=age)
        self._store = store
        self._failing = False

    def store(self) -> JobStore:
        """The job store whose index this schedule reads."""
        if self._store is not None:
            return self._store()
        try:
            return _stores[self.app]()
        except KeyError:
            raise ErgateError(
                f"No job index is served for Celery app {self.app.main!r}: create "
                "ErgateCelery(app) in the module that creates the app beat runs"
            ) from None

    def is_due(self, last_run_at: datetime) -> schedstate:
        """`(due, seconds until beat should ask again)`; the seconds are at most `run_every`."""
        interval = self.every.total_seconds()
        try:
            store = self.store()
            head = store.index_entries(self.kind, FAR_FUTURE, 1)
            now = store.clock()
        except Exception as exc:
            if not self._failing:
                logger.warning(
                    "beat could not read the %s job index (%r); sending its task every %s s "
                    "until it can",
                    self.kind,
                    exc,
                    interval,
                )
            self._failing = True
            return schedstate(True, interval)
        if self._failing:
            logger.warning("beat reads the %s job index again", self.kind)
            self._failing = False
        if not head:
            return schedstate(False, interval)
        wait = (head[0].at + self.age - now).total_seconds()
        if wait <= 0:
            return schedstate(True, interval)
        return schedstate(False, min(wait, interval))

    def __reduce__(self) -> tuple[Any, ...]:
        # Beat's shelve pickles its entries and reads them back after each sync: the
        # schedule then finds the store served for its app.
        return IndexSchedule, (self.kind, self.every, self.age.total_seconds())

    def __repr__(self) -> str:
        return f"<IndexSchedule: {self.kind} index, checked every {self.every}>"
