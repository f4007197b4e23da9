"""The job index on every store (earliest first, bounded, entries dropped only while they are
what was read), on Redis within the app's `global_keyprefix`; and the one expiry rule: only
final and PENDING jobs follow `result_expires`."""

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis

from ergate_celery import Job, JobStatus
from ergate_celery.stores import ACTIVE, SCHEDULED, IndexEntry

from .support import STORES, Setup

pytestmark = pytest.mark.setup(*STORES)


def _scheduled(setup: Setup, job_id: str, at: datetime) -> Job:
    job = Job(
        id=job_id, workflow_name="indexed", status=JobStatus.SCHEDULED, requested_start_time=at
    )
    setup.ergate.store.create(job)
    return job


def _queued(setup: Setup, job_id: str) -> Job:
    job = Job(id=job_id, workflow_name="indexed", status=JobStatus.QUEUED)
    setup.ergate.store.create(job)
    return job


def test_index_entries_are_earliest_first_up_to_the_limit(setup: Setup) -> None:
    store = setup.ergate.store
    # Microseconds included: an entry's time is the one stored, exactly.
    base = datetime(2030, 1, 1, 12, 0, 0, 123457, tzinfo=UTC)
    for minutes in (4, 1, 3, 0, 2, 60):
        _scheduled(setup, f"at-{minutes}", base + timedelta(minutes=minutes, microseconds=minutes))
    _queued(setup, "active-1")
    until = base + timedelta(minutes=10)

    entries = store.index_entries(SCHEDULED, until, 3)

    assert entries == [
        IndexEntry(SCHEDULED, f"at-{m}", base + timedelta(minutes=m, microseconds=m))
        for m in (0, 1, 2)
    ]
    assert [e.job_id for e in store.index_entries(SCHEDULED, until, 100)] == [
        f"at-{m}" for m in (0, 1, 2, 3, 4)
    ]
    assert store.due(until, 100) == [f"at-{m}" for m in (0, 1, 2, 3, 4)]
    assert store.due(base - timedelta(seconds=1), 100) == []
    assert [e.job_id for e in store.index_entries(ACTIVE, datetime.now(UTC), 100)] == ["active-1"]
    assert store.stale(datetime.now(UTC), 100) == ["active-1"]


def test_a_dead_entry_is_dropped_once(setup: Setup) -> None:
    store = setup.ergate.store
    at = datetime(2030, 1, 1, tzinfo=UTC)
    _scheduled(setup, "forgotten", at)
    _scheduled(setup, "kept", at + timedelta(seconds=1))
    # The record disappears outside the store (forgotten through Celery): its entry stays.
    setup.app.AsyncResult("forgotten").forget()
    assert store.get("forgotten") is None
    [dead, live] = store.index_entries(SCHEDULED, at + timedelta(days=1), 10)
    assert dead.job_id == "forgotten"

    assert store.drop_index_entry(dead)
    assert not store.drop_index_entry(dead)
    assert store.index_entries(SCHEDULED, at + timedelta(days=1), 10) == [live]


def test_an_entry_moved_since_it_was_read_is_kept(setup: Setup) -> None:
    store = setup.ergate.store
    _queued(setup, "moving")
    [read] = store.index_entries(ACTIVE, datetime.now(UTC), 10)
    time.sleep(0.01)  # the write below indexes the job at a later time
    store.update("moving", lambda job: job.model_copy(update={"percent_completed": 50.0}))

    assert not store.drop_index_entry(read)
    [moved] = store.index_entries(ACTIVE, datetime.now(UTC), 10)
    assert (moved.job_id, moved.at > read.at) == ("moving", True)

    assert store.drop_index_entry(moved)
    assert store.index_entries(ACTIVE, datetime.now(UTC), 10) == []


def test_rescheduled_entry_is_kept_and_a_wrong_kind_drops_nothing(setup: Setup) -> None:
    store = setup.ergate.store
    at = datetime(2030, 1, 1, tzinfo=UTC)
    _scheduled(setup, "rescheduled", at)
    [read] = store.index_entries(SCHEDULED, at, 10)
    later = at + timedelta(hours=1)
    store.update("rescheduled", lambda job: job.model_copy(update={"requested_start_time": later}))

    assert not store.drop_index_entry(read)
    assert not store.drop_index_entry(read._replace(kind=ACTIVE, at=later))
    assert store.index_entries(SCHEDULED, later, 10) == [
        IndexEntry(SCHEDULED, "rescheduled", later)
    ]


#: Under the one expiry rule, the statuses whose records follow `result_expires`.
EXPIRING = {
    JobStatus.PENDING,
    JobStatus.COMPLETED,
    JobStatus.FAILED,
    JobStatus.ABORTED,
    JobStatus.CANCELLED,
}


def test_only_final_and_pending_jobs_expire(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name, result_expires=1)
    store = setup.ergate.store
    far = datetime.now(UTC) + timedelta(days=30)
    for status in JobStatus:
        start = far if status is JobStatus.SCHEDULED else None
        store.create(
            Job(
                id=f"expiry-{status.name}",
                workflow_name="indexed",
                status=status,
                requested_start_time=start,
            )
        )
    time.sleep(2.5)
    setup.app.tasks["celery.backend_cleanup"]()  # Redis needs none: its keys have a TTL

    kept = {status for status in JobStatus if store.get(f"expiry-{status.name}") is not None}

    assert kept == set(JobStatus) - EXPIRING


def test_redis_apps_with_other_key_prefixes_keep_their_own_index(
    make_setup: Callable[..., Setup],
) -> None:
    def tenant(prefix: str) -> Setup:
        options = {"global_keyprefix": prefix}
        return make_setup("redis", result_backend_transport_options=options)

    first, second = tenant("first"), tenant("second:")  # Celery adds "_" to the first only
    at = datetime(2030, 1, 1, tzinfo=UTC)
    _scheduled(first, "first-due", at)
    _queued(first, "first-active")
    _scheduled(second, "second-due", at)
    later, now = at + timedelta(days=1), datetime.now(UTC)

    assert first.ergate.store.due(later, 10) == ["first-due"]
    assert second.ergate.store.due(later, 10) == ["second-due"]
    assert first.ergate.store.stale(now, 10) == ["first-active"]
    assert second.ergate.store.stale(now, 10) == []
    client = redis.Redis.from_url(first.services["redis"].url)
    assert sorted(client.keys("*ergate:*")) == [
        b"first_ergate:ergate-tests:active",
        b"first_ergate:ergate-tests:scheduled",
        b"second:ergate:ergate-tests:scheduled",
    ]
