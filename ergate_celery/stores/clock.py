"""The store's clock: the time every process of an app decides by (leases, due times, idleness).

Each process compares timestamps other processes wrote — a worker's lease, a job's start time,
the time of a record's last change — so they must all come from one clock: the store's server
(Redis `TIME`, PostgreSQL `clock_timestamp()`). A `StoreClock` reads the server's time now and
then, and adds the offset it found to the process's clock in between: no round trip per read,
and a host whose clock is off by a minute still releases, leases and sweeps on the store's time.
Stores without a server of their own (SQLite, memory) keep the process's clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

logger = logging.getLogger(__name__)

#: Seconds between two readings of the server's time.
REFRESH_SECONDS = 30.0
#: Seconds before a failed reading is tried again (the process clock serves meanwhile).
RETRY_SECONDS = 5.0
#: Readings taken at most per refresh; a round trip this short ends them.
_READINGS = 3
_QUICK = timedelta(milliseconds=20)


def process_time() -> datetime:
    """The current time by this process's clock."""
    return datetime.now(UTC)


class StoreClock:
    """The store server's time, read every `REFRESH_SECONDS` and carried on by the process's
    clock (`local`, which a test may skew) in between."""

    def __init__(
        self,
        server_time: Callable[[], datetime | None],
        local: Callable[[], datetime] = process_time,
    ) -> None:
        self.server_time = server_time
        self.local = local
        self._offset = timedelta(0)
        self._next = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        if time.monotonic() >= self._next:
            self.refresh()
        return self.local() + self._offset

    @property
    def offset(self) -> timedelta:
        """The server's time minus the process's, as last measured."""
        return self._offset

    def refresh(self) -> None:
        """Measure the offset now (a reading that fails keeps the last one)."""
        with self._lock:
            best: tuple[timedelta, timedelta] | None = None  # (round trip, offset)
            for _ in range(_READINGS):
                before = self.local()
                try:
                    server = self.server_time()
                except Exception as exc:
                    logger.debug("Could not read the store's clock (%r); trying again soon", exc)
                    self._next = time.monotonic() + RETRY_SECONDS
                    return
                after = self.local()
                if server is None:  # no server of its own: the process's clock is the store's
                    self._offset, self._next = timedelta(0), float("inf")
                    return
                # The server read its clock somewhere inside the round trip: take the middle.
                # The first reading may include opening the connection: the shortest wins.
                trip = after - before
                if best is None or trip < best[0]:
                    best = (trip, server - (before + trip / 2))
                if trip <= _QUICK:
                    break
            assert best is not None
            trip, offset = best
            # An offset within the round trip cannot be told from none (one host's clock).
            self._offset = offset if abs(offset) > trip else timedelta(0)
            self._next = time.monotonic() + REFRESH_SECONDS
