"""The store's update loop on every store: compare-and-set, with or without an assumed record
(a right guess writes at once, a wrong one never writes what it computed from the guess), a
concurrent write recomputed from, and the duplicate-id error."""

from typing import Any

import pytest

from ergate_celery import DuplicateJobError, Job, JobStatus
from ergate_celery.stores.base import TaskResult

from .support import STORES, Setup
from .workflows import echo_workflow

pytestmark = pytest.mark.setup(*STORES)


def _job(setup: Setup) -> Job:
    setup.ergate.register_workflow(echo_workflow("stored"))
    return setup.ergate.submit_job("stored", initial_input_value=1)


def _bump(stored: Job) -> Job | None:
    return stored.model_copy(update={"attempt": stored.attempt + 1})


def test_a_right_guess_is_written(setup: Setup) -> None:
    job = _job(setup)
    before, written = setup.ergate.store.update(str(job.id), _bump, assume=job)
    assert before == job
    assert written is not None
    assert written.attempt == 1
    assert setup.ergate.get_job(str(job.id)) == written


def test_a_stale_guess_is_recomputed_from_the_stored_record(setup: Setup) -> None:
    job = _job(setup)
    moved = setup.ergate.store.update(
        str(job.id), lambda stored: stored.model_copy(update={"percent_completed": 50.0})
    ).after
    assert moved is not None
    # `job` still says 0%: the change must be applied to the stored 50%, not to the guess.
    before, written = setup.ergate.store.update(str(job.id), _bump, assume=job)
    assert before == moved
    assert written is not None
    assert (written.attempt, written.percent_completed) == (1, 50.0)
    assert setup.ergate.get_job(str(job.id)) == written


def test_a_guess_that_refuses_the_change_is_checked_against_the_record(setup: Setup) -> None:
    job = _job(setup)
    setup.ergate.store.update(str(job.id), lambda s: s.model_copy(update={"attempt": 3}))

    def only_after_three(stored: Job) -> Job | None:
        return _bump(stored) if stored.attempt == 3 else None

    written = setup.ergate.store.update(str(job.id), only_after_three, assume=job).after
    assert written is not None
    assert written.attempt == 4


def test_a_guess_about_a_missing_job_changes_nothing(setup: Setup) -> None:
    ghost = Job(id="no-such-job", workflow_name="stored")
    assert setup.ergate.store.update("no-such-job", _bump, assume=ghost) == (None, None)
    assert setup.ergate.store.get("no-such-job") is None


def test_the_task_result_is_stored_exactly_when_the_change_is(setup: Setup) -> None:
    job = _job(setup)
    result = TaskResult("stored-step-1", lambda written: {"attempt": written.attempt})
    setup.ergate.store.update(str(job.id), _bump, assume=job, result=result)
    stored = setup.app.AsyncResult("stored-step-1")
    assert (stored.state, stored.result) == ("SUCCESS", {"attempt": 1})

    refused = TaskResult("stored-step-2", lambda written: {"attempt": written.attempt})
    assert setup.ergate.store.update(str(job.id), lambda s: None, result=refused).after is None
    assert setup.app.AsyncResult("stored-step-2").state == "PENDING"


def test_a_change_that_lost_a_race_is_recomputed_from_the_winner(setup: Setup) -> None:
    job = _job(setup)
    seen: list[int] = []

    def bump_after_a_concurrent_write(stored: Job) -> Job | None:
        if not seen:  # another process writes between this read and this write
            setup.ergate.store.update(str(job.id), lambda s: s.model_copy(update={"attempt": 7}))
        seen.append(stored.attempt)
        return _bump(stored)

    before, written = setup.ergate.store.update(str(job.id), bump_after_a_concurrent_write)
    assert seen == [0, 7]
    assert before is not None
    assert before.attempt == 7  # the record the write was computed from: the winner's
    assert written is not None
    assert written.attempt == 8
    assert setup.ergate.get_job(str(job.id)) == written


def test_a_job_deleted_during_a_change_is_not_written_back(setup: Setup) -> None:
    job = _job(setup)

    def bump_after_a_delete(stored: Job) -> Job | None:
        setup.ergate.store.delete(str(job.id))
        return _bump(stored)

    assert setup.ergate.store.update(str(job.id), bump_after_a_delete) == (None, None)
    assert setup.ergate.store.get(str(job.id)) is None
    assert setup.ergate.store.update("no-such-job", _bump) == (None, None)


def test_a_final_write_is_stamped_finished(setup: Setup) -> None:
    job = _job(setup)
    done = setup.ergate.store.update(
        str(job.id), lambda s: s.model_copy(update={"status": JobStatus.COMPLETED}), assume=job
    ).after
    assert done is not None
    assert done.finished_at is not None
    assert setup.ergate.get_job(str(job.id)) == done


def test_a_duplicate_id_is_refused_and_the_stored_job_untouched(setup: Setup) -> None:
    job = _job(setup)
    stored = setup.ergate.get_job(str(job.id))
    other = Job(id=job.id, workflow_name="stored", initial_input_value="other")
    with pytest.raises(DuplicateJobError, match="already exists"):
        setup.ergate.store.create(other)
    with pytest.raises(DuplicateJobError):
        setup.ergate.submit_job("stored", initial_input_value=2, id=str(job.id))
    assert setup.ergate.get_job(str(job.id)) == stored


@pytest.mark.setup("redis")
def test_redis_reads_nothing_when_the_guess_is_right(setup: Setup) -> None:
    job = _job(setup)
    store: Any = setup.ergate.store
    reads: list[Any] = []
    client = store.client
    original = client.get
    client.get = lambda *args, **kwargs: reads.append(args) or original(*args, **kwargs)
    try:
        claimed = store.update(str(job.id), _bump, assume=job).after
        store.update(str(job.id), _bump, assume=claimed)  # the digest the claim wrote
        assert reads == []
        store.update(str(job.id), _bump, assume=job)  # stale: the script sends the record back
        assert reads == []
    finally:
        del client.get
    final = setup.ergate.get_job(str(job.id))
    assert (final.attempt, final.status) == (3, JobStatus.QUEUED)
