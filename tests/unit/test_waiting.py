"""`Sleep` and `WaitForSignal` refuse bad arguments when raised, and the graph draws a waiting
step as one (the waiting itself runs on a worker in tests/test_waiting.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ergate_celery import InvalidInputError, Sleep, WaitForSignal
from ergate_celery.model.graph import mermaid

from ..apps import waiting_app


def test_sleep_and_wait_for_signal_refuse_bad_arguments() -> None:
    now = datetime.now(UTC)
    for kwargs in ({}, {"seconds": 1, "until": now}):
        with pytest.raises(InvalidInputError, match="exactly one"):
            Sleep(**kwargs)
    for seconds in (-1, float("inf"), True, "5"):
        with pytest.raises(InvalidInputError, match="number >= 0"):
            Sleep(seconds=seconds)
    with pytest.raises(InvalidInputError, match="naive"):
        Sleep(until=datetime.now())
    with pytest.raises(InvalidInputError, match="must be a datetime"):
        Sleep(until="2030-01-01")  # type: ignore[arg-type]
    for name in ("", None, "a b", "n" * 65):
        with pytest.raises(InvalidInputError, match="signal name"):
            WaitForSignal(name)  # type: ignore[arg-type]
    for timeout in (0, -5, float("nan")):
        with pytest.raises(InvalidInputError, match="timeout"):
            WaitForSignal("ok", timeout=timeout)
    assert Sleep(seconds=0).seconds == 0
    assert WaitForSignal("ok").timeout is None


def test_the_graph_draws_a_waiting_step_as_such() -> None:
    drawn = mermaid(waiting_app.approval)
    assert 's0{{"ask"}}' in drawn
    assert 's0 -.->|"WaitForSignal approved"| s1' in drawn
    assert 's1["decide"]' in drawn
    assert 's0 -.->|"Sleep"| s1' in mermaid(waiting_app.napping)
