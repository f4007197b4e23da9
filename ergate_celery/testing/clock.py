"""The virtual clock of a `WorkflowTester`: it stands still until the test moves it."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any


def moment(name: str, value: Any) -> datetime:
    """`value` as an aware UTC datetime (a naive one is UTC, as Celery reads a naive eta)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def duration(
    delta: Any = None, *, seconds: Any = 0, minutes: Any = 0, hours: Any = 0, days: Any = 0
) -> timedelta:
    """A step of the clock: a `timedelta` or a number of seconds, or keyword amounts; never
    negative."""
    amounts = {"seconds": seconds, "minutes": minutes, "hours": hours, "days": days}
    for name, amount in amounts.items():
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise TypeError(f"{name} must be a number, got {type(amount).__name__}")
        if not math.isfinite(amount):
            raise ValueError(f"{name} must be a finite number, got {amount!r}")
    step = timedelta(**amounts)
    if delta is not None:
        if isinstance(delta, bool) or not isinstance(delta, timedelta | int | float):
            raise TypeError(
                f"advance() takes a timedelta or a number of seconds, got {type(delta).__name__}"
            )
        if not isinstance(delta, timedelta):
            if not math.isfinite(delta):
                raise ValueError(f"advance() takes a finite number of seconds, got {delta!r}")
            delta = timedelta(seconds=delta)
        step += delta
    if step < timedelta(0):
        raise ValueError(
            f"The clock only moves forward: advance() got {step.total_seconds():g} s; "
            "a test that needs an earlier moment starts its WorkflowTester at it (now=...)"
        )
    return step


class VirtualClock:
    """The current time of a tester: `now()` is what every change of a job reads; it moves
    only by `move_to`, never by itself."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = datetime.now(UTC) if start is None else moment("now", start)

    def now(self) -> datetime:
        """The current virtual time (aware, UTC)."""
        return self._now

    def move_to(self, at: datetime) -> None:
        """Set the time to `at`, which is not earlier than now."""
        if at < self._now:
            raise ValueError(f"The clock only moves forward: {at} is before {self._now}")
        self._now = at
