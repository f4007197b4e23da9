"""Operations on the memory store: retry, signal and release publish what a lost reply left
(asked again, or, for beat's release, within the same run); a rejected message fails only its
own job; input that does not fit its type is told without its values; a tag value with a
control character is refused for that."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel, ValidationError

from ergate_celery import (
    ErgateCelery,
    InvalidInputError,
    JobError,
    JobStateError,
    JobStatus,
    RedactedValidationError,
    Workflow,
)
from ergate_celery.lifecycle import publishing
from ergate_celery.lifecycle.events import Published, Release, RetryRequested, Signalled
from ergate_celery.model.job import Wait
from ergate_celery.operations import queueing
from ergate_celery.operations.retrying import retry_job
from ergate_celery.operations.signalling import check_payload, signal_job
from ergate_celery.scheduling.release import release_due_jobs
from ergate_celery.worker.rejects import reject_message
from ergate_celery.worker.runtime import Runtime

from ..support import LostReplies, Recorder
from ..workflows import echo_workflow

SECRET = "4111-1111-1111-1111"


def _losing(ergate: ErgateCelery, recorder: Recorder, lose: set[int]) -> Runtime:
    return Runtime(
        store=LostReplies(ergate.store, lose),  # type: ignore[arg-type]
        settings=ergate.settings,
        announce=recorder.announce,  # type: ignore[arg-type]
        publish=recorder.publish,
    )


def _failed(ergate: ErgateCelery) -> str:
    ergate.register_workflow(echo_workflow("orders", "prepare", "charge"))
    job_id = str(ergate.submit_job("orders", initial_input_value={"id": 1}).id)
    error = JobError(type="ConnectionError", message="down", step="prepare")
    ergate.store.update(
        job_id, lambda job: job.model_copy(update={"status": JobStatus.FAILED, "error": error})
    )
    return job_id


@pytest.fixture
def grace(monkeypatch: pytest.MonkeyPatch) -> float:
    """A short wait for a first caller (5 s in production)."""
    monkeypatch.setattr(queueing, "FIRST_CALLER_GRACE", 0.2)
    return 0.2


def test_a_retry_whose_reply_was_lost_publishes_its_step_once(
    memory_ergate: ErgateCelery, recorder: Recorder
) -> None:
    job_id = _failed(memory_ergate)
    rt = _losing(memory_ergate, recorder, {1})
    retried = retry_job(rt, job_id)  # written, reply lost, recognised by its token
    assert (retried.status, retried.retries) == (JobStatus.QUEUED, 1)
    assert [job.id for job in recorder.published] == [job_id]
    assert memory_ergate.get_job(job_id).queued_by is None  # published: nothing left to do


def test_a_retry_whose_caller_died_before_publishing_is_finished_by_asking_again(
    memory_ergate: ErgateCelery, recorder: Recorder, grace: float
) -> None:
    job_id = _failed(memory_ergate)
    rt = _losing(memory_ergate, recorder, set())
    rt.apply(job_id, RetryRequested("dead"), sender="a caller killed before it published")
    again = retry_job(rt, job_id)
    assert (again.status, again.retries) == (JobStatus.QUEUED, 1)
    assert [job.id for job in recorder.published] == [job_id]
    with pytest.raises(JobStateError, match="QUEUED"):
        retry_job(rt, job_id)  # its publish is done: nothing left to finish
    assert len(recorder.published) == 1


def test_a_retry_racing_a_live_first_caller_is_refused(
    memory_ergate: ErgateCelery, recorder: Recorder
) -> None:
    job_id = _failed(memory_ergate)
    rt = _losing(memory_ergate, recorder, set())
    mark = rt.apply(job_id, RetryRequested("alive"), sender="first").after
    assert mark is not None
    assert mark.queued_by is not None
    # The first caller publishes a moment later, and says so.
    first = threading.Timer(0.2, lambda: rt.apply(job_id, Published("retry alive"), sender="first"))
    first.start()
    with pytest.raises(JobStateError, match="QUEUED"):
        retry_job(rt, job_id)
    first.join()
    assert recorder.published == []  # the first caller's publish is not recorded here


def test_a_signal_whose_reply_was_lost_or_whose_caller_died_is_finished(
    memory_ergate: ErgateCelery, recorder: Recorder, grace: float
) -> None:
    memory_ergate.register_workflow(echo_workflow("approvals", "ship"))
    rt = _losing(memory_ergate, recorder, {1})
    lost, dead = (_waiting_for_approval(memory_ergate) for _ in range(2))
    assert signal_job(rt, lost, "approved", {"by": "ana"}).status is JobStatus.QUEUED
    rt.apply(dead, Signalled("approved", {"by": "ana"}, "dead"), sender="killed")
    again = signal_job(rt, dead, "approved", {"by": "bob"})
    assert again.signals == {"approved": {"by": "ana"}}  # the first payload stays
    assert [job.id for job in recorder.published] == [lost, dead]
    signal_job(rt, dead, "approved")  # published since: already received, nothing to do
    signal_job(rt, dead, "other")
    assert len(recorder.published) == 2


def _waiting_for_approval(ergate: ErgateCelery) -> str:
    job_id = str(ergate.submit_job("approvals", initial_input_value=1).id)
    wait = Wait(step="ask", since=datetime.now(UTC), signal="approved")
    ergate.store.update(
        job_id,
        lambda job: job.model_copy(update={"status": JobStatus.SCHEDULED, "wait": wait}),
    )
    return job_id


def test_a_release_whose_reply_was_lost_publishes_in_the_same_run(
    memory_ergate: ErgateCelery, recorder: Recorder
) -> None:
    memory_ergate.register_workflow(echo_workflow("later", "only"))
    start = datetime.now(UTC) + timedelta(hours=1)
    job = memory_ergate.submit_job("later", initial_input_value=1, requested_start_time=start)
    rt = _losing(memory_ergate, recorder, {1})
    assert release_due_jobs(rt, start + timedelta(seconds=1)) == 1
    assert [published.id for published in recorder.published] == [job.id]
    assert memory_ergate.get_job(str(job.id)).status is JobStatus.QUEUED


def test_a_job_whose_caller_died_before_publishing_is_published_by_the_next_release(
    memory_ergate: ErgateCelery, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release run, a retry and a signal each killed between their write and their publish:
    no one asks again, and beat's next release after the grace publishes each step once."""
    monkeypatch.setattr(publishing, "PUBLISH_GRACE", 0.3)
    rt = _losing(memory_ergate, recorder, set())
    retried = _failed(memory_ergate)
    memory_ergate.register_workflow(echo_workflow("approvals", "ship"))
    signalled = _waiting_for_approval(memory_ergate)
    start = datetime.now(UTC) + timedelta(seconds=0.2)
    released = str(
        memory_ergate.submit_job("orders", initial_input_value=1, requested_start_time=start).id
    )
    rt.apply(retried, RetryRequested("dead"), sender="killed")
    rt.apply(signalled, Signalled("approved", {"by": "ana"}, "dead"), sender="killed")
    while datetime.now(UTC) <= start:
        time.sleep(0.05)
    rt.apply(released, Release(frozenset(), "dead"), sender="killed")
    dead = {retried, signalled, released}
    for job_id in dead:
        assert memory_ergate.get_job(job_id).queued_by is not None
    assert release_due_jobs(rt) == 0  # within the grace: its caller may still publish
    assert recorder.published == []
    time.sleep(0.4)
    assert release_due_jobs(rt) == 3
    assert {str(job.id) for job in recorder.published} == dead
    for job_id in dead:
        job = memory_ergate.get_job(job_id)
        assert (job.status, job.queued_by) == (JobStatus.QUEUED, None)
    assert release_due_jobs(rt) == 0  # published and noted: nothing left
    assert len(recorder.published) == 3


def test_a_rejected_message_fails_only_its_own_job(
    memory_ergate: ErgateCelery, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = _failed(memory_ergate)
    victim = retry_job(
        Runtime(memory_ergate.store, memory_ergate.settings, recorder.announce, recorder.publish),  # type: ignore[arg-type]
        job_id,
    )
    assert victim.status is JobStatus.QUEUED
    rt = _losing(memory_ergate, recorder, set())
    error = JobError(type="MalformedMessage", message="is not a job")
    caplog.set_level(logging.WARNING, logger="ergate_celery")
    for other in ("ergate.other.o1", "ergate.orders.charge"):
        assert reject_message(rt, {"id": job_id}, error, other) is None
    assert memory_ergate.get_job(job_id).status is JobStatus.QUEUED
    assert "left alone (it is at step 'prepare' of workflow 'orders')" in caplog.text
    assert reject_message(rt, {"id": job_id}, error, "ergate.orders.prepare") == job_id
    assert memory_ergate.get_job(job_id).status is JobStatus.FAILED


class Card(BaseModel):
    number: int
    cvv: int


def test_input_that_does_not_fit_its_type_is_told_without_its_values(
    memory_ergate: ErgateCelery,
) -> None:
    workflow = Workflow(unique_name="pay")

    @workflow.step
    def charge(card: Card) -> int:
        return card.number

    memory_ergate.register_workflow(workflow)
    with pytest.raises(InvalidInputError) as raised:
        memory_ergate.submit_job("pay", initial_input_value={"number": SECRET, "cvv": "x-999"})
    said = str(raised.value)
    assert "number (int_parsing)" in said
    assert "cvv (int_parsing)" in said
    assert SECRET not in said
    assert "x-999" not in said


def test_a_redacted_validation_error_names_places_and_types_only() -> None:
    with pytest.raises(ValidationError) as raised:
        Card.model_validate({"number": SECRET})
    redacted = RedactedValidationError.of(raised.value)
    assert str(redacted) == "2 validation errors for Card: number (int_parsing); cvv (missing)"
    assert redacted.__traceback__ is not None


def test_a_tag_with_a_control_character_is_refused_for_that(memory_ergate: ErgateCelery) -> None:
    memory_ergate.register_workflow(echo_workflow("tagged"))
    with pytest.raises(InvalidInputError, match="not printable") as raised:
        memory_ergate.submit_job("tagged", tags={"order": "A-17\x00"})
    assert "at most" not in str(raised.value)


def test_a_signal_payload_that_is_not_json_is_told_without_its_values() -> None:
    with pytest.raises(InvalidInputError, match=r"payload\['card'\]: tuple") as raised:
        check_payload({"card": (SECRET, "123")}, 10_000)
    assert SECRET not in str(raised.value)
