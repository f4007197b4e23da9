"""`list_jobs` on every store: newest first, finished jobs too, filters by status, workflow,
time and tags, cursors that page without gaps or repeats, entries of expired records trimmed;
and tags checked at submit, retention per status."""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ergate_celery import (
    InvalidInputError,
    Job,
    JobStatus,
    UnknownWorkflowError,
    Workflow,
    list_jobs,
    submit_job,
)
from ergate_celery.lifecycle.events import MessageRejected
from ergate_celery.model.job import JobError

from .support import STORES, Setup

pytestmark = pytest.mark.setup(*STORES)
BASE = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _register(setup: Setup, *names: str) -> None:
    for name in names:
        workflow = Workflow(unique_name=name)

        @workflow.step
        def only(value: Any) -> Any:
            return value

        setup.ergate.register_workflow(workflow)


def _stored(setup: Setup, job_id: str, minutes: int, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": job_id,
        "workflow_name": "alpha",
        "status": JobStatus.QUEUED,
        "submitted_at": BASE + timedelta(minutes=minutes),
        **fields,
    }
    job = Job(**values)
    setup.ergate.store.create(job)
    return job


def _fail(setup: Setup, job_id: str) -> None:
    error = JobError(type="Boom", message="failed for the test")
    setup.ergate.runtime.apply(job_id, MessageRejected(error), sender="test")


def _ids(page: Any) -> list[str]:
    return [str(job.id) for job in page.jobs]


def test_jobs_are_listed_newest_first_finished_ones_too(setup: Setup) -> None:
    _register(setup, "alpha", "beta")
    for minutes in range(6):
        _stored(setup, f"job-{minutes}", minutes, workflow_name="alpha" if minutes % 2 else "beta")
    _fail(setup, "job-3")
    _fail(setup, "job-4")

    assert _ids(setup.ergate.list_jobs()) == [f"job-{m}" for m in (5, 4, 3, 2, 1, 0)]
    assert _ids(setup.ergate.list_jobs(status=JobStatus.FAILED)) == ["job-4", "job-3"]
    assert _ids(setup.ergate.list_jobs(status="QUEUED", workflow="alpha")) == ["job-5", "job-1"]
    assert _ids(setup.ergate.list_jobs(status=["FAILED", JobStatus.QUEUED], workflow="beta")) == [
        "job-4",
        "job-2",
        "job-0",
    ]
    window = setup.ergate.list_jobs(
        since=BASE + timedelta(minutes=1), until=BASE + timedelta(minutes=3)
    )
    assert _ids(window) == ["job-3", "job-2", "job-1"]
    assert list_jobs(status=JobStatus.RUNNING).jobs == []


def test_pages_follow_their_cursor_without_gaps_or_repeats(setup: Setup) -> None:
    _register(setup, "alpha")
    # Two jobs share a submission time: the id breaks the tie.
    for minutes in range(7):
        _stored(setup, f"job-{minutes}", minutes)
    _stored(setup, "job-3b", 3)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = setup.ergate.list_jobs(limit=3, cursor=cursor)
        seen += _ids(page)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["job-6", "job-5", "job-4", "job-3b", "job-3", "job-2", "job-1", "job-0"]
    assert pages == 3
    failed_pages = setup.ergate.list_jobs(status="QUEUED", limit=8)
    assert failed_pages.next_cursor is None


def test_tags_are_stored_searchable_and_checked_at_submit(setup: Setup) -> None:
    _register(setup, "alpha")
    first = submit_job("alpha", initial_input_value=1, tags={"order": "A-17", "shop": "acme"})
    submit_job("alpha", initial_input_value=2, tags={"order": "A-18", "shop": "acme"})
    assert setup.ergate.get_job(str(first.id)).tags == {"order": "A-17", "shop": "acme"}
    assert _ids(list_jobs(tags={"order": "A-17"})) == [str(first.id)]
    assert len(list_jobs(tags={"shop": "acme"}).jobs) == 2
    assert list_jobs(tags={"shop": "acme", "order": "A-19"}).jobs == []
    before = len(list_jobs().jobs)
    for bad in ({"order": 17}, {1: "x"}, {"k" * 65: "v"}, {"k": "v" * 201}, ["order"]):
        with pytest.raises(InvalidInputError):
            submit_job("alpha", initial_input_value=1, tags=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="at most 20"):
        submit_job("alpha", tags={f"k{i}": "v" for i in range(21)})
    assert len(list_jobs().jobs) == before


def test_bad_filters_and_cursors_are_clear_errors(setup: Setup) -> None:
    _register(setup, "alpha")
    with pytest.raises(InvalidInputError, match="not a cursor"):
        setup.ergate.list_jobs(cursor="not-a-cursor")
    with pytest.raises(InvalidInputError, match="not one of"):
        setup.ergate.list_jobs(status="DONE")
    with pytest.raises(UnknownWorkflowError):
        setup.ergate.list_jobs(workflow="nope")
    with pytest.raises(InvalidInputError, match="limit"):
        setup.ergate.list_jobs(limit=0)
    with pytest.raises(InvalidInputError, match="str to str"):
        setup.ergate.list_jobs(tags={"order": 17})  # type: ignore[dict-item]


def test_a_record_gone_from_the_store_leaves_the_listing(setup: Setup) -> None:
    _register(setup, "alpha")
    for minutes in range(3):
        _stored(setup, f"job-{minutes}", minutes)
    _fail(setup, "job-1")
    _forget(setup, "job-1")  # as expiry or Celery's backend_cleanup removes it
    assert _ids(setup.ergate.list_jobs()) == ["job-2", "job-0"]
    assert _ids(setup.ergate.list_jobs(status="FAILED")) == []
    assert _ids(setup.ergate.list_jobs()) == ["job-2", "job-0"]


def _forget(setup: Setup, job_id: str) -> None:
    # Only the record, as an expiry would: the listing entries stay behind to be trimmed.
    store: Any = setup.ergate.store
    if setup.name in ("redis", "memory"):
        store.client.delete(store._key(job_id))
    elif setup.name == "django_db":
        store.model.objects.filter(task_id=job_id).delete()
    else:
        import sqlalchemy as sa

        with store.engine.begin() as conn:
            conn.execute(sa.delete(store.table).where(store.table.c.task_id == job_id))


def test_a_page_reads_a_bounded_number_of_entries(setup: Setup) -> None:
    _register(setup, "alpha")
    for minutes in range(40):
        _stored(setup, f"job-{minutes:02}", minutes, tags={"n": str(minutes)})
    store: Any = setup.ergate.store
    reads: list[int] = []
    listed = store._listed

    def counting(query: Any, after: Any, count: int) -> Any:
        reads.append(count)
        return listed(query, after, count)

    store._listed = counting
    page = setup.ergate.list_jobs(limit=5)
    assert _ids(page) == [f"job-{m:02}" for m in range(39, 34, -1)]
    assert sum(reads) <= 6
    reads.clear()
    # A filter the index may not serve (status and tag together) still reads a bounded number.
    page = setup.ergate.list_jobs(status="QUEUED", tags={"n": "0"}, limit=1)
    assert sum(reads) <= 10


def test_retention_follows_the_status(make_setup: Any, setup_name: str) -> None:
    setup = make_setup(setup_name, ergate_expires_by_status={"FAILED": 7200}, result_expires=60)
    _register(setup, "alpha")
    _stored(setup, "failed", 0)
    _stored(setup, "cancelled", 1)
    _stored(setup, "queued", 2)
    _fail(setup, "failed")
    setup.ergate.cancel_job("cancelled")
    assert _kept_for(setup, "queued") is None
    failed = _kept_for(setup, "failed")
    assert failed is not None
    assert 7000 < failed <= 7200
    cancelled = _kept_for(setup, "cancelled")
    assert cancelled is not None
    assert 0 < cancelled <= 60


def _kept_for(setup: Setup, job_id: str) -> float | None:
    """Seconds until the store removes the record (None: never)."""
    store: Any = setup.ergate.store
    now = datetime.now(UTC)
    expires = 60.0
    if setup.name == "redis":
        ttl = store.client.ttl(store._key(job_id))
        return None if ttl < 0 else float(ttl)
    if setup.name == "memory":
        at = store._space.expires.get(job_id)
        return None if at is None else at - time.monotonic()
    if setup.name == "django_db":
        done = store.model.objects.get(task_id=job_id).date_done
        if done.year == 9999:
            return None
        return (done - now).total_seconds() + expires
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        done = conn.execute(
            sa.select(store.table.c.date_done).where(store.table.c.task_id == job_id)
        ).scalar()
    if done is None:
        return None
    return (done.replace(tzinfo=UTC) - now).total_seconds() + expires


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_a_job_is_in_the_status_set_of_its_latest_status_only(
    make_setup: Any, serializer: str
) -> None:
    # On Redis a write moves the job out of the set its stored record names; a record stored
    # in another serializer than JSON is moved out of every other set instead.
    setup = make_setup(
        "redis", result_serializer=serializer, result_accept_content=["json", "pickle"]
    )
    _register(setup, "alpha")
    _stored(setup, "job-0", 0)
    _stored(setup, "job-1", 1)
    _stored(setup, "job-2", 2)
    _fail(setup, "job-0")
    _fail(setup, "job-2")
    expected = {JobStatus.FAILED: ["job-2", "job-0"], JobStatus.QUEUED: ["job-1"]}
    for status in JobStatus:
        assert _ids(setup.ergate.list_jobs(status=status)) == expected.get(status, []), status
    keys = setup.ergate.store._status_keys
    members = {status: keys[status] for status in JobStatus}
    found = {status: setup.app.backend.client.zrange(key, 0, -1) for status, key in members.items()}
    assert {status: value for status, value in found.items() if value} == {
        JobStatus.FAILED: [b"job-0", b"job-2"],
        JobStatus.QUEUED: [b"job-1"],
    }
