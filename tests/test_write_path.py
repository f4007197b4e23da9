"""The one write path, without a service: `store.update` returns what it read and what it
wrote, and `Runtime.apply` recognises a write whose reply was lost (by the token the claim or
the outcome carries) and announces it once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from celery.utils.dispatch import Signal

from ergate_celery import signals
from ergate_celery.exceptions import JobNotFoundError
from ergate_celery.lifecycle.events import Claim, Finish
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.operations.cancelling import cancel_job
from ergate_celery.settings import ErgateSettings
from ergate_celery.stores.base import (
    BaseJobStore,
    IndexEntry,
    Outcome,
    Stored,
    TaskResult,
    Updated,
)
from ergate_celery.stores.listing import JobQuery, Position
from ergate_celery.worker.announcer import Announcer
from ergate_celery.worker.runtime import Runtime

NOW = datetime(2030, 1, 1, tzinfo=UTC)


class ReplyLostError(ConnectionError):
    """The write went through; its reply did not come back."""


class StubJobStore(BaseJobStore[str]):
    """Records in a dict; the compare-and-set compares the record's JSON. `lose_replies`
    writes that many more times and raises as if the reply were lost."""

    def __init__(self) -> None:
        super().__init__(backend=None, max_bytes=1_000_000)
        self.records: dict[str, Job] = {}
        self.lose_replies = 0
        self.reads = 0

    def _read(self, job_id: str) -> Stored[str] | None:
        self.reads += 1
        job = self.records.get(job_id)
        return None if job is None else Stored(job, self._token_of(job))

    def _token_of(self, job: Job) -> str:
        return job.model_dump_json()

    def _compare_and_set(
        self, job_id: str, expected: str, new: Job, result: TaskResult | None
    ) -> Stored[str] | Outcome:
        job = self.records.get(job_id)
        if job is None:
            return Outcome.GONE
        if self._token_of(job) != expected:
            return Stored(job, self._token_of(job))
        self.records[job_id] = new
        if self.lose_replies:
            self.lose_replies -= 1
            raise ReplyLostError("the connection dropped after the write")
        return Outcome.WRITTEN

    def _insert(self, job: Job) -> bool:
        return self.records.setdefault(str(job.id), job) is job

    def delete(self, job_id: str) -> None:
        self.records.pop(job_id, None)

    def index_entries(self, kind: str, until: datetime, limit: int) -> list[IndexEntry]:
        return []

    def drop_index_entry(self, entry: IndexEntry) -> bool:
        return False

    def _listed(
        self, query: JobQuery, after: Position | None, count: int
    ) -> list[tuple[Position, Job | None]]:
        return []

    def paused_workflows(self) -> set[str]:
        return set()

    def set_paused(self, workflow_name: str, paused: bool) -> bool:
        return False


def _bump(job: Job) -> Job:
    return job.model_copy(update={"attempt": job.attempt + 1})


@pytest.fixture
def store() -> StubJobStore:
    store = StubJobStore()
    store.create(Job(id="job-1", workflow_name="wf", current_step_name="a"))
    return store


@pytest.fixture
def announced() -> Iterator[list[str]]:
    """The names of the lifecycle signals sent, in order."""
    sent: list[str] = []

    def receive(signal: Any = None, **kwargs: Any) -> None:
        sent.append(signal.name.removeprefix("ergate."))

    every = [value for value in vars(signals).values() if isinstance(value, Signal)]
    for signal in every:
        signal.connect(receive, weak=False)
    yield sent
    for signal in every:
        signal.disconnect(receive)


def _runtime(store: StubJobStore) -> Runtime:
    return Runtime(store, ErgateSettings(), Announcer(Celery("unit"), False), lambda job: None)


def _claim(token: str) -> Claim:
    return Claim(
        workflow_name="wf",
        step_name="a",
        step_index=0,
        steps_completed=0,
        token=token,
        lease_until=NOW + timedelta(hours=1),
        redelivered=False,
        max_attempts=3,
        workflow_version="v1",
    )


def test_update_returns_the_record_it_read_and_the_job_it_wrote(store: StubJobStore) -> None:
    stored = store.records["job-1"]
    before, after = store.update("job-1", _bump)
    assert before == stored
    assert after is not None
    assert after.attempt == stored.attempt + 1
    assert store.records["job-1"] == after


def test_update_that_changes_nothing_returns_the_record_as_read(store: StubJobStore) -> None:
    assert store.update("job-1", lambda job: None) == Updated(store.records["job-1"], None)


def test_update_of_a_missing_record_returns_neither(store: StubJobStore) -> None:
    assert store.update("no-such-job", _bump) == Updated(None, None)
    ghost = Job(id="no-such-job", workflow_name="wf")
    assert store.update("no-such-job", _bump, assume=ghost) == Updated(None, None)


def test_update_against_a_stale_assumption_returns_the_record_it_found(
    store: StubJobStore,
) -> None:
    assumed = store.records["job-1"]
    moved = store.update("job-1", _bump).after
    assert moved is not None
    before, after = store.update("job-1", _bump, assume=assumed)
    assert before == moved  # not the assumption: the record the write was computed from
    assert after is not None
    assert after.attempt == moved.attempt + 1


def test_a_claim_whose_reply_was_lost_is_recognised_and_announced_once(
    store: StubJobStore, announced: list[str]
) -> None:
    rt = _runtime(store)
    message = store.records["job-1"]
    store.lose_replies = 1
    with pytest.raises(ReplyLostError):
        rt.apply("job-1", _claim("ours"), sender="ergate.wf.a", now=NOW, assume=message)
    assert announced == []
    # Tried again, as `Runtime.retrying` does: the record holds our claim already.
    before, after = rt.apply("job-1", _claim("ours"), sender="ergate.wf.a", now=NOW, assume=message)
    assert before == message
    assert after is not None
    assert (after.claim, after.status) == ("ours", JobStatus.RUNNING)
    assert announced == ["job_started", "step_started"]


def test_another_runs_claim_is_not_taken_for_ours(store: StubJobStore) -> None:
    rt = _runtime(store)
    message = store.records["job-1"]
    rt.apply("job-1", _claim("theirs"), sender="ergate.wf.a", now=NOW, assume=message)
    before, after = rt.apply("job-1", _claim("ours"), sender="ergate.wf.a", now=NOW, assume=message)
    assert after is None
    assert before is not None
    assert before.claim == "theirs"


def test_an_outcome_whose_reply_was_lost_is_recognised_and_announced_once(
    store: StubJobStore, announced: list[str]
) -> None:
    rt = _runtime(store)
    message = store.records["job-1"]
    claimed = rt.apply("job-1", _claim("ours"), sender="s", now=NOW, assume=message).after
    assert claimed is not None
    done = claimed.model_copy(update={"status": JobStatus.COMPLETED, "steps_completed": 1})
    announced.clear()
    store.lose_replies = 1
    with pytest.raises(ReplyLostError):
        rt.apply("job-1", Finish("ours", done), sender="s", now=NOW, assume=claimed)
    before, after = rt.apply("job-1", Finish("ours", done), sender="s", now=NOW, assume=claimed)
    assert before == claimed
    assert after is not None
    assert (after.finished_by, after.status) == ("ours", JobStatus.COMPLETED)
    assert announced == ["step_completed", "job_completed"]


@pytest.mark.parametrize(
    ("status", "after"),
    [
        (JobStatus.QUEUED, JobStatus.CANCELLED),
        (JobStatus.RUNNING, JobStatus.CANCELLING),
        (JobStatus.COMPLETED, JobStatus.COMPLETED),
    ],
)
def test_cancel_job_reads_the_job_once(
    store: StubJobStore, status: JobStatus, after: JobStatus
) -> None:
    store.records["job-1"] = store.records["job-1"].model_copy(update={"status": status})
    store.reads = 0
    assert cancel_job(_runtime(store), "job-1").status is after
    assert store.reads == 1


def test_cancel_job_of_an_unknown_id_is_job_not_found(store: StubJobStore) -> None:
    with pytest.raises(JobNotFoundError, match="No job with id 'nope'"):
        cancel_job(_runtime(store), "nope")
    with pytest.raises(TypeError, match="A job id is a string, got int"):
        cancel_job(_runtime(store), 7)  # type: ignore[arg-type]
