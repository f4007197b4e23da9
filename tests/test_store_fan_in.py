"""Fan-in on every store, without a worker: the ends of the last children, written at the
same instant from several threads, release their parent exactly once, and every end is
counted once (the compare-and-set of `ChildEnded` on the parent record)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from ergate_celery import Job, JobStatus
from ergate_celery.lifecycle.events import ChildEnded
from ergate_celery.model.job import FanOutState, Wait

from .support import STORES, Setup, race

pytestmark = pytest.mark.setup(*STORES)

S = JobStatus
CHILDREN = 4


def _waiting_parent(setup: Setup, n: int) -> str:
    now = datetime.now(UTC)
    state = FanOutState(
        step="split",
        hop=0,
        workflow="child",
        first=0,
        count=CHILDREN,
        then="join",
        percent_to=50.0,
    )
    parent = Job(
        id=f"fan-in-{n}",
        workflow_name="parent",
        status=S.SCHEDULED,
        current_step=1,
        current_step_name="join",
        steps_completed=1,
        wait=Wait(step="split", since=now, until=now + timedelta(hours=1), children=CHILDREN),
        fan_out=state,
        submitted_at=now,
    )
    setup.ergate.store.create(parent)
    return str(parent.id)


def _end_at_once(setup: Setup, parent_id: str, positions: list[int]) -> list[Job]:
    """Count the ends of `positions` on the parent from one thread each, all at once; the
    parent as each write that released it left it."""
    rt = setup.ergate.runtime
    released: list[Job] = []
    lock = threading.Lock()

    def end(position: int) -> None:
        after = rt.apply(parent_id, ChildEnded(position), sender="test").after
        if after is not None and after.status is S.QUEUED:
            with lock:
                released.append(after)

    race(*(partial(end, position) for position in positions))
    return released


def test_children_ending_at_once_release_their_parent_once(setup: Setup) -> None:
    for n in range(5):
        parent_id = _waiting_parent(setup, n)
        # Two children twice: a repeated notice of the same end changes nothing.
        released = _end_at_once(setup, parent_id, [0, 1, 2, 3, 2, 3])
        assert len(released) == 1
        stored = setup.ergate.get_job(parent_id)
        assert stored.status is S.QUEUED
        assert stored.wait is None
        assert stored.fan_out is not None
        assert stored.fan_out.ended == [(0, CHILDREN)]
        assert stored.percent_completed == 50.0
