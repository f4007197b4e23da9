"""Beat's schedule entries for the release and the sweep: due only when the job index holds due
work, and a store that fails is read again at the next look (beat itself: tests/test_beat.py)."""

import logging
from datetime import UTC, datetime, timedelta

import pytest

from ergate_celery.scheduling.index_schedule import IndexSchedule
from ergate_celery.stores.base import ACTIVE, SCHEDULED, IndexEntry


class _Store:
    def __init__(self, entries: list[IndexEntry] | Exception) -> None:
        self.entries = entries

    def index_entries(self, kind: str, until: datetime, limit: int) -> list[IndexEntry]:
        if isinstance(self.entries, Exception):
            raise self.entries
        return self.entries[:limit]

    def clock(self) -> datetime:
        return datetime.now(UTC)


def test_index_schedule_fires_only_for_due_entries() -> None:
    now = datetime.now(UTC)
    store = _Store([])
    release = IndexSchedule(SCHEDULED, 1.0, store=lambda: store)  # type: ignore[arg-type,return-value]
    assert tuple(release.is_due(now)) == (False, 1.0)
    store.entries = [IndexEntry(SCHEDULED, "a", now + timedelta(seconds=0.3))]
    due, wait = release.is_due(now)
    assert not due
    assert 0 < wait <= 0.3  # asks again when the head falls due
    store.entries = [IndexEntry(SCHEDULED, "a", now - timedelta(seconds=1))]
    assert tuple(release.is_due(now)) == (True, 1.0)
    sweep = IndexSchedule(ACTIVE, 5.0, age=60, store=lambda: store)  # type: ignore[arg-type,return-value]
    store.entries = [IndexEntry(ACTIVE, "a", now - timedelta(seconds=30))]
    due, wait = sweep.is_due(now)
    assert not due
    assert wait == 5.0
    store.entries = [IndexEntry(ACTIVE, "a", now - timedelta(seconds=61))]
    assert sweep.is_due(now)[0]


def test_index_schedule_survives_a_store_error(caplog: pytest.LogCaptureFixture) -> None:
    store = _Store(ConnectionError("backend down"))
    release = IndexSchedule(SCHEDULED, 1.0, store=lambda: store)  # type: ignore[arg-type,return-value]
    with caplog.at_level(logging.WARNING, logger="ergate_celery"):
        assert [tuple(release.is_due(datetime.now(UTC))) for _ in range(3)] == [(True, 1.0)] * 3
        store.entries = []
        assert tuple(release.is_due(datetime.now(UTC))) == (False, 1.0)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages  # once when it fails, once when it reads again
    assert "backend down" in messages[0]
