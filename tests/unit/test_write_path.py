"""The one write path on the memory store: `store.update` returns the record its change was
computed from and the job it wrote; `Runtime.apply` recognises a claim or an outcome that an
earlier try wrote before its reply was lost, returns it and announces it once; `cancel_job`
reads its job once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ergate_celery import ErgateCelery, Job, JobNotFoundError, JobStatus
from ergate_celery.lifecycle.events import Claim, Finish
from ergate_celery.operations.cancelling import cancel_job
from ergate_celery.stores import Updated
from ergate_celery.worker.runtime import Runtime

from ..support import LostReplies, Recorder
from ..workflows import echo_workflow

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def queued(memory_ergate: ErgateCelery) -> Job:
    """A QUEUED job of a one-step workflow, stored (its message is never delivered)."""
    memory_ergate.register_workflow(echo_workflow("solo", "only"))
    return memory_ergate.submit_job("solo", initial_input_value=1)


def _bump(job: Job) -> Job:
    return job.model_copy(update={"attempt": job.attempt + 1})


def _claim(token: str) -> Claim:
    return Claim(
        workflow_name="solo",
        step_name="only",
        step_index=0,
        steps_completed=0,
        token=token,
        lease_until=NOW + timedelta(hours=1),
        max_attempts=3,
        workflow_version="v1",
    )


def _losing(ergate: ErgateCelery, recorder: Recorder, lose: set[int]) -> Runtime:
    """A Runtime on the memory store whose `update` calls numbered in `lose` lose their
    reply after writing."""
    return Runtime(
        store=LostReplies(ergate.store, lose),  # type: ignore[arg-type]
        settings=ergate.settings,
        announce=recorder.announce,  # type: ignore[arg-type]
        publish=recorder.publish,
    )


def test_update_returns_the_record_it_read_and_the_job_it_wrote(
    memory_ergate: ErgateCelery, queued: Job
) -> None:
    stored = memory_ergate.get_job(str(queued.id))
    before, after = memory_ergate.store.update(str(queued.id), _bump)
    assert before == stored
    assert after is not None
    assert after.attempt == stored.attempt + 1
    assert memory_ergate.get_job(str(queued.id)) == after


def test_update_that_changes_nothing_returns_the_record_as_read(
    memory_ergate: ErgateCelery, queued: Job
) -> None:
    stored = memory_ergate.get_job(str(queued.id))
    assert memory_ergate.store.update(str(queued.id), lambda job: None) == Updated(stored, None)


def test_update_of_a_missing_record_returns_neither(memory_ergate: ErgateCelery) -> None:
    store = memory_ergate.store
    assert store.update("no-such-job", _bump) == Updated(None, None)
    ghost = Job(id="no-such-job", workflow_name="solo")
    assert store.update("no-such-job", _bump, assume=ghost) == Updated(None, None)


def test_update_against_a_stale_assumption_returns_the_record_it_found(
    memory_ergate: ErgateCelery, queued: Job
) -> None:
    moved = memory_ergate.store.update(str(queued.id), _bump).after
    assert moved is not None
    before, after = memory_ergate.store.update(str(queued.id), _bump, assume=queued)
    assert before == moved  # not the assumption: the record the write was computed from
    assert after is not None
    assert after.attempt == moved.attempt + 1


def test_a_claim_whose_reply_was_lost_is_recognised_and_announced_once(
    memory_ergate: ErgateCelery, recorder: Recorder, queued: Job
) -> None:
    rt = _losing(memory_ergate, recorder, {1})
    job_id = str(queued.id)
    with pytest.raises(ConnectionError):
        rt.apply(job_id, _claim("ours"), sender="s", now=NOW, assume=queued)
    assert recorder.announced == []
    # Tried again, as `Runtime.retrying` does: the record holds this claim already.
    before, after = rt.apply(job_id, _claim("ours"), sender="s", now=NOW, assume=queued)
    assert before == queued
    assert after == memory_ergate.get_job(job_id)
    assert (after.claim, after.status) == ("ours", JobStatus.RUNNING)
    assert recorder.changes == [("QUEUED", "RUNNING")]


def test_another_runs_claim_is_not_taken_for_ours(
    memory_ergate: ErgateCelery, recorder: Recorder, queued: Job
) -> None:
    rt = _losing(memory_ergate, recorder, set())
    rt.apply(str(queued.id), _claim("theirs"), sender="s", now=NOW, assume=queued)
    before, after = rt.apply(str(queued.id), _claim("ours"), sender="s", now=NOW, assume=queued)
    assert after is None
    assert before is not None
    assert before.claim == "theirs"
    assert recorder.changes == [("QUEUED", "RUNNING")]


def test_an_outcome_whose_reply_was_lost_is_recognised_and_announced_once(
    memory_ergate: ErgateCelery, recorder: Recorder, queued: Job
) -> None:
    rt = _losing(memory_ergate, recorder, {2})
    job_id = str(queued.id)
    claimed = rt.apply(job_id, _claim("ours"), sender="s", now=NOW, assume=queued).after
    assert claimed is not None
    done = claimed.model_copy(update={"status": JobStatus.COMPLETED, "steps_completed": 1})
    with pytest.raises(ConnectionError):
        rt.apply(job_id, Finish("ours", done), sender="s", now=NOW, assume=claimed)
    before, after = rt.apply(job_id, Finish("ours", done), sender="s", now=NOW, assume=claimed)
    assert before == claimed
    assert after == memory_ergate.get_job(job_id)
    assert (after.finished_by, after.status) == ("ours", JobStatus.COMPLETED)
    assert recorder.changes == [("QUEUED", "RUNNING"), ("RUNNING", "COMPLETED")]


@pytest.mark.parametrize(
    ("cancelled", "now"),
    [
        (None, JobStatus.CANCELLED),
        (JobStatus.RUNNING, JobStatus.CANCELLING),
        (JobStatus.COMPLETED, JobStatus.COMPLETED),
    ],
)
def test_cancel_job_reads_the_job_once(
    memory_ergate: ErgateCelery,
    queued: Job,
    monkeypatch: pytest.MonkeyPatch,
    cancelled: JobStatus | None,
    now: JobStatus,
) -> None:
    store: Any = memory_ergate.store
    if cancelled is not None:
        store.update(str(queued.id), lambda job: job.model_copy(update={"status": cancelled}))
    reads: list[str] = []
    read = store._read
    monkeypatch.setattr(store, "_read", lambda job_id: reads.append(job_id) or read(job_id))
    assert memory_ergate.cancel_job(str(queued.id)).status is now
    assert reads == [str(queued.id)]


def test_cancel_job_of_an_unknown_or_malformed_id_says_so(memory_ergate: ErgateCelery) -> None:
    with pytest.raises(JobNotFoundError, match="No job with id 'nope' is stored"):
        memory_ergate.cancel_job("nope")
    with pytest.raises(TypeError, match="A job id is a string, got int"):
        memory_ergate.cancel_job(7)  # type: ignore[arg-type]
    with pytest.raises(JobNotFoundError):
        cancel_job(memory_ergate.runtime, "nope")
