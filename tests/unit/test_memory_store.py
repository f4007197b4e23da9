"""The memory store on Celery's in-memory result backend (`cache+memory://`), without a server:
a job is the Celery result of its id, seen from every thread of the process; writes from
several threads are compare-and-set; apps apart in the cache are apart in the index; expiry
follows the one rule; memcached is refused with what to use instead. (The store contract
itself runs on this store too: tests/test_store_*.py and test_list_jobs.py, setup "memory".)"""

import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from celery.backends.cache import CacheBackend
from celery.result import AsyncResult

from ergate_celery import ErgateCelery, Job, JobStatus, UnsupportedBackendError
from ergate_celery.lifecycle.events import Cancel
from ergate_celery.stores import SCHEDULED, store_for_backend
from ergate_celery.stores import memory as memory_store
from ergate_celery.stores.listing import JobQuery
from ergate_celery.stores.memory import MemoryJobStore


def _app(**conf: Any) -> Celery:
    """An app on the memory backend, with a key prefix of its own in the process's cache."""
    app = Celery(f"memory-{uuid.uuid4().hex[:8]}", set_as_current=False)
    prefix = {"global_keyprefix": f"test-{uuid.uuid4().hex[:8]}"}
    app.conf.update(
        broker_url="memory://",
        result_backend="cache+memory://",
        result_backend_transport_options=prefix,
        **conf,
    )
    return app


@pytest.fixture
def ergate() -> Iterator[ErgateCelery]:
    app = _app()
    yield ErgateCelery(app)
    app.close()


def _job(job_id: str, **fields: Any) -> Job:
    return Job(**{"id": job_id, "workflow_name": "stored", "status": JobStatus.QUEUED, **fields})


def test_cache_memory_gets_the_memory_store() -> None:
    app = _app()
    assert isinstance(store_for_backend(app.backend, 1_000_000), MemoryJobStore)


def test_memcached_is_refused_saying_what_to_use() -> None:
    backend = CacheBackend(app=_app(), url="memory://")
    # Celery needs pymemcache to build a memcached backend; the store looks at the scheme only.
    vars(backend)["backend"] = "memcached"
    with pytest.raises(UnsupportedBackendError, match=r"memcached://.*redis://.*cache\+memory://"):
        store_for_backend(backend, 1_000_000)


def test_a_job_is_the_celery_result_of_its_id(ergate: ErgateCelery) -> None:
    ergate.store.create(_job("order-1"))
    result = ergate.app.AsyncResult("order-1")
    assert result.state == "QUEUED"
    assert not result.ready()
    ergate.runtime.apply("order-1", Cancel(), sender="test")
    done = ergate.app.AsyncResult("order-1")
    assert (done.state, done.ready(), done.successful()) == ("CANCELLED", True, False)
    assert done.result["status"] == JobStatus.CANCELLED.value
    assert done.date_done is not None


def test_every_thread_reads_the_same_records(ergate: ErgateCelery) -> None:
    # Celery keeps a backend per thread (the celery_worker fixture's worker runs in one).
    ergate.store.create(_job("shared"))
    seen: list[str] = []

    def read() -> None:
        backend = ergate.app.backend
        seen.append(AsyncResult("shared", backend=backend, app=ergate.app).state)
        seen.append(str(ergate.store.get("shared").status.name))  # type: ignore[union-attr]

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert seen == ["QUEUED", "QUEUED"]


def test_writes_from_many_threads_are_compare_and_set(ergate: ErgateCelery) -> None:
    store = ergate.store
    store.create(_job("counted"))
    # Threads switch as often as Python allows: a write that is not atomic loses updates.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def bump(stored: Job) -> Job:
        return stored.model_copy(update={"attempt": stored.attempt + 1})

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: store.update("counted", bump), range(3000)))
    finally:
        sys.setswitchinterval(interval)
    assert store.get("counted").attempt == 3000  # type: ignore[union-attr]


def test_apps_apart_in_the_cache_are_apart_in_the_index() -> None:
    first, second = ErgateCelery(_app()), ErgateCelery(_app())
    at = datetime(2030, 1, 1, tzinfo=UTC)
    for ergate in (first, second):
        ergate.store.create(
            _job("same-id", status=JobStatus.SCHEDULED, requested_start_time=at, submitted_at=at)
        )
    first.store.set_paused("stored", True)

    assert first.store.due(at, 10) == second.store.due(at, 10) == ["same-id"]
    first.store.delete("same-id")
    assert first.store.due(at, 10) == []
    assert second.store.due(at, 10) == ["same-id"]
    assert [job.id for job in second.list_jobs().jobs] == ["same-id"]
    assert (first.paused_workflows(), second.paused_workflows()) == ({"stored"}, set())


def test_finished_jobs_expire_and_waiting_ones_never(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ErgateCelery(_app(result_expires=60)).store
    start = datetime.now(UTC) + timedelta(days=30)
    store.create(_job("done", status=JobStatus.COMPLETED, submitted_at=start))
    store.create(_job("waiting", status=JobStatus.SCHEDULED, requested_start_time=start))
    later = memory_store.monotonic() + 61
    monkeypatch.setattr(memory_store, "monotonic", lambda: later)

    assert store.get("done") is None
    assert store.get("waiting") is not None
    assert store.list_jobs(JobQuery(), 10, None).jobs == []
    assert [entry.job_id for entry in store.index_entries(SCHEDULED, start, 10)] == ["waiting"]


def test_a_virtual_clock_stamps_the_records() -> None:
    store = ErgateCelery(_app()).store
    assert isinstance(store, MemoryJobStore)
    moment = datetime(2030, 5, 1, tzinfo=UTC)
    store.clock = lambda: moment
    store.create(_job("clocked"))
    [entry] = store.index_entries("active", moment, 10)
    assert entry.at == moment
    failed = JobStatus.FAILED
    done = store.update("clocked", lambda job: job.model_copy(update={"status": failed})).after
    assert done is not None
    assert done.finished_at == moment
