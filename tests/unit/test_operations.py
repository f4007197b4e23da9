"""Operations on the memory store: retry, signal and release publish what a lost reply left
(asked again, or, for beat's release, within the same run); a rejected message fails only its
own job; input that does not fit its type is told without its values; a tag value with a
control character is refused for that."""

from __future__ import annotations

import logging
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
from ergate_celery.model.job import Wait
from ergate_celery.operations.retrying import retry_job
from ergate_celery.operations.signalling import signal_job
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


def test_a_retry_asked_again_after_a_lost_reply_publishes_its_step(
    memory_ergate: ErgateCelery, recorder: Recorder
) -> None:
    job_id = _failed(memory_ergate)
    rt = _losing(memory_ergate, recorder, {1})
    with pytest.raises(ConnectionError):
        retry_job(rt, job_id)
    assert recorder.published == []  # written, never published: QUEUED with no message
    again = retry_job(rt, job_id)
    assert (again.status, again.retries) == (JobStatus.QUEUED, 1)
    assert [job.id for job in recorder.published] == [job_id]
    # Once a step claimed it, it is no longer the retry's to finish.
    claimed = memory_ergate.store.update(
        job_id, lambda job: job.model_copy(update={"status": JobStatus.RUNNING, "queued_by": None})
    ).after
    assert claimed is not None
    with pytest.raises(JobStateError, match="RUNNING"):
        retry_job(rt, job_id)


def test_a_signal_asked_again_after_a_lost_reply_releases_the_job(
    memory_ergate: ErgateCelery, recorder: Recorder
) -> None:
    memory_ergate.register_workflow(echo_workflow("approvals", "ship"))
    job_id = str(memory_ergate.submit_job("approvals", initial_input_value=1).id)
    memory_ergate.store.update(
        job_id,
        lambda job: job.model_copy(
            update={
                "status": JobStatus.SCHEDULED,
                "wait": Wait(step="ask", since=datetime.now(UTC), signal="approved"),
            }
        ),
    )
    rt = _losing(memory_ergate, recorder, {1})
    with pytest.raises(ConnectionError):
        signal_job(rt, job_id, "approved", {"by": "ana"})
    assert recorder.published == []
    again = signal_job(rt, job_id, "approved", {"by": "bob"})
    assert again.signals == {"approved": {"by": "ana"}}  # the first payload stays
    assert [job.id for job in recorder.published] == [job_id]
    # Another name already received does not publish it again.
    signal_job(rt, job_id, "other")
    signal_job(rt, job_id, "other")
    assert len(recorder.published) == 1


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
