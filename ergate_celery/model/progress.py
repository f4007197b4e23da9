"""Progress inside a step: a reporter the step asks for with `Annotated[..., Progress()]`,
and the watch through which a running step learns that its job was cancelled."""

from __future__ import annotations

import time
from collections.abc import Callable

from ergate_celery.exceptions import JobCancelled


class CancelWatch:
    """Whether a cancel of the running step's job is stored: read at most once per
    `interval` seconds, and remembered once seen."""

    def __init__(
        self,
        read: Callable[[], bool],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._interval = interval
        self._clock = clock
        self._last_read = float("-inf")
        self._cancelled = False

    def note(self, cancelled: bool) -> None:
        """Take what a write that just read the record saw: no need to read again soon."""
        self._last_read = self._clock()
        self._cancelled = self._cancelled or cancelled

    def requested(self) -> bool:
        """Whether a cancel is stored (as of the last read, at most `interval` s old)."""
        if self._cancelled:
            return True
        now = self._clock()
        if now - self._last_read >= self._interval:
            self._last_read = now
            self._cancelled = self._read()
        return self._cancelled


class ProgressReporter:
    """Moves `percent_completed` within the running step's share; writes are throttled.

    With a `cancel` watch (as on a worker), `report()` raises `JobCancelled` once a cancel of
    the job is stored, so a long step stops at its next report and its `finally` blocks run.
    """

    def __init__(
        self,
        start: float,
        end: float,
        write: Callable[[float], bool | None],
        interval: float,
        cancel: CancelWatch | None = None,
    ) -> None:
        self.start, self.end = start, end
        self._write = write
        self._interval = interval
        self._cancel = cancel
        self._last_write = float("-inf")
        self._last_percent = start

    @property
    def percent(self) -> float:
        """The job's percent as last reported (written or not)."""
        return self._last_percent

    def report(self, fraction: float) -> None:
        """Say the step is `fraction` (0.0 to 1.0) done; stored at most once per interval.

        Raises `JobCancelled` when the job has been cancelled meanwhile.
        """
        if not isinstance(fraction, int | float) or isinstance(fraction, bool):
            raise TypeError(f"report() takes a fraction from 0.0 to 1.0, got {fraction!r}")
        bounded = min(max(float(fraction), 0.0), 1.0)
        percent = self.start + bounded * (self.end - self.start)
        if percent > self._last_percent:  # progress only moves forward
            self._last_percent = percent
            now = time.monotonic()
            if now - self._last_write >= self._interval:
                self._last_write = now
                cancelled = self._write(percent)
                if self._cancel is not None and cancelled is not None:
                    self._cancel.note(cancelled)
        if self._cancel is not None and self._cancel.requested():
            raise JobCancelled("The job was cancelled while this step ran")


class Progress:
    """Marker: the parameter receives the step's `ProgressReporter`."""
