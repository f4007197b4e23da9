"""Progress inside a step: a reporter the step asks for with `Annotated[..., Progress()]`."""

from __future__ import annotations

import time
from collections.abc import Callable


class ProgressReporter:
    """Moves `percent_completed` within the running step's share; writes are throttled."""

    def __init__(
        self, start: float, end: float, write: Callable[[float], None], interval: float
    ) -> None:
        self.start, self.end = start, end
        self._write = write
        self._interval = interval
        self._last_write = float("-inf")
        self._last_percent = start

    @property
    def percent(self) -> float:
        """The job's percent as last reported (written or not)."""
        return self._last_percent

    def report(self, fraction: float) -> None:
        """Say the step is `fraction` (0.0 to 1.0) done; stored at most once per interval."""
        if not isinstance(fraction, int | float) or isinstance(fraction, bool):
            raise TypeError(f"report() takes a fraction from 0.0 to 1.0, got {fraction!r}")
        bounded = min(max(float(fraction), 0.0), 1.0)
        percent = self.start + bounded * (self.end - self.start)
        if percent <= self._last_percent:
            return  # progress only moves forward
        self._last_percent = percent
        now = time.monotonic()
        if now - self._last_write >= self._interval:
            self._last_write = now
            self._write(percent)


class Progress:
    """Marker: the parameter receives the step's `ProgressReporter`."""
