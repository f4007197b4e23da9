"""The job lifecycle as a table, without Celery: every (status, event, condition) row of
`LIFECYCLE` is what `transition` does, and the docs' state diagram is printed from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ergate_celery.lifecycle.events import (
    Cancel,
    ChildEnded,
    Claim,
    Event,
    FanOutStarted,
    Finish,
    HandOver,
    MessageRejected,
    Park,
    ParkedChecked,
    ProcessLost,
    ProgressReported,
    Published,
    PublishFailed,
    Recover,
    Release,
    Renew,
    RetryRequested,
    Signalled,
    SlotGranted,
    TimeLimit,
    TurnCame,
    Unpark,
    WaitForSlot,
    Yield,
)
from ergate_celery.lifecycle.table import LIFECYCLE, Row, mermaid
from ergate_celery.lifecycle.transitions import (
    KEPT_RECOVERIES,
    already_written,
    moved_on_from,
    queued_by,
    transition,
)
from ergate_celery.model.job import FanOutState, Job, JobError, StepTiming, Wait
from ergate_celery.model.job_status import JobStatus

S = JobStatus
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CONCEPTS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "concepts.md"


def _stored(status: JobStatus, **fields: Any) -> Job:
    holds = status in (S.RUNNING, S.CANCELLING)
    base: dict[str, Any] = {
        "id": "job-1",
        "workflow_name": "wf",
        "status": status,
        "current_step": 1,
        "current_step_name": "b",
        "steps_completed": 1,
        "attempt": 1 if holds else 0,
        "claim": "held" if holds else None,
        "lease_until": NOW + timedelta(hours=1) if holds else None,
        "started_at": NOW - timedelta(minutes=1),
        "requested_start_time": NOW - timedelta(seconds=1) if status is S.SCHEDULED else None,
    }
    return Job(**{**base, **fields})


def _claim(**fields: Any) -> Claim:
    values: dict[str, Any] = {
        "workflow_name": "wf",
        "step_name": "b",
        "step_index": 1,
        "steps_completed": 1,
        "token": "new",
        "lease_until": NOW + timedelta(hours=1),
        "max_attempts": 3,
        "workflow_version": "v2",
    }
    return Claim(**{**values, **fields})


_FINISHED = {
    "returned, more steps": S.QUEUED,
    "last step returned, or GoToEnd": S.COMPLETED,
    "raised": S.FAILED,
    "AbortJob": S.ABORTED,
    "more steps": S.QUEUED,
    "last step returned": S.COMPLETED,
    "JobCancelled": S.CANCELLED,
    "JobCancelled: the step stopped at a report": S.CANCELLED,
}
_SLEEP = Wait(step="b", since=NOW - timedelta(minutes=5), until=NOW - timedelta(seconds=1))
_APPROVAL = Wait(
    step="b", since=NOW - timedelta(minutes=5), until=NOW + timedelta(hours=1), signal="ok"
)


_FAN_OUT = FanOutState(step="a", hop=0, workflow="child", first=0, count=2, then="b")
_CHILDREN = Wait(
    step="a", since=NOW - timedelta(minutes=5), until=NOW + timedelta(hours=1), children=2
)


def _fan_out_scenario(stored: Job, row: Row) -> tuple[Job, Event] | None:
    """The situations of the fan-out rows (a job waiting for two children)."""
    when = row.when
    waiting = stored.model_copy(update={"fan_out": _FAN_OUT, "wait": _CHILDREN})
    one_ended = _FAN_OUT.with_ended(0)
    plain = {"FanOutStarted": FanOutStarted("held", _FAN_OUT), "ChildEnded": ChildEnded(0)}
    if not when and row.event in (*plain, "TurnCame"):
        return stored, plain.get(row.event, TurnCame())
    match row.event:
        case "FanOutStarted":
            return stored, FanOutStarted("held", _FAN_OUT)
        case "Finish" if "FanOut" in when:
            counted = one_ended.with_ended(1) if "all ended" in when else one_ended
            after = waiting.model_copy(update={"status": S.SCHEDULED})
            return stored.model_copy(update={"fan_out": counted}), Finish("held", after)
        case "Release" if "children" in when:
            overdue = _CHILDREN.model_copy(update={"until": NOW - timedelta(seconds=1)})
            return waiting.model_copy(update={"wait": overdue}), Release()
        case "Cancel" if "children" in when:
            return waiting, Cancel()
        case "ChildEnded":
            if row.status is S.RUNNING:
                return stored.model_copy(update={"fan_out": _FAN_OUT}), ChildEnded(0)
            if when == "a child ended, others unfinished":
                return waiting, ChildEnded(1)
            counted = waiting.model_copy(update={"fan_out": one_ended})
            return counted, ChildEnded(0 if when == "counted already" else 1)
        case "TurnCame":
            held = Wait(step="first", since=NOW, turn_of="parent")
            return stored.model_copy(update={"wait": held}), TurnCame()
        case "RetryRequested" if "children" in when:
            done = waiting.model_copy(update={"fan_out": one_ended.with_ended(1)})
            return done, RetryRequested()
    return None


def scenario(row: Row) -> tuple[Job, Event]:
    """A stored job and an event that make the situation `row` describes."""
    stored = _stored(row.status)
    when = row.when
    fanned = _fan_out_scenario(stored, row)
    if fanned is not None:
        return fanned
    match row.event:
        case "HandOver":
            return stored, HandOver(S.SCHEDULED if "later" in when else S.QUEUED)
        case "Release":
            if when == "past its deadline":
                stored = stored.model_copy(update={"deadline": NOW - timedelta(seconds=1)})
            if when == "not due yet":
                later = NOW + timedelta(hours=1)
                stored = stored.model_copy(update={"requested_start_time": later})
            if when == "a Sleep ended":
                stored = stored.model_copy(update={"wait": _SLEEP})
            if when == "a WaitForSignal timed out":
                timed_out = _APPROVAL.model_copy(update={"until": NOW - timedelta(seconds=1)})
                stored = stored.model_copy(update={"wait": timed_out})
            if when == "waiting, not due yet":
                stored = stored.model_copy(update={"wait": _APPROVAL})
            paused = frozenset({"wf"}) if "paused" in when else frozenset()
            return stored, Release(paused)
        case "Claim":
            if when == "first step, past its deadline":
                stored = stored.model_copy(
                    update={"steps_completed": 0, "deadline": NOW - timedelta(seconds=1)}
                )
                return stored, _claim(steps_completed=0)
            if when == "a stale message":
                return stored, _claim(steps_completed=0)
            if when == "worker lost max_step_attempts times":
                stored = stored.model_copy(update={"lost_runs": 2})
            if when in ("an expired lease", "worker lost max_step_attempts times"):
                stored = stored.model_copy(update={"lease_until": NOW - timedelta(seconds=1)})
            return stored, _claim()
        case "Finish":
            token = "other" if when == "another run holds the claim" else "held"
            after = stored.model_copy(update={"status": _FINISHED.get(when, S.QUEUED)})
            if "WaitForSignal" in when:
                after = after.model_copy(update={"status": S.SCHEDULED, "wait": _APPROVAL})
            if "already came" in when:
                stored = stored.model_copy(update={"signals": {"ok": {"by": "ana"}}})
            return stored, Finish(token, after)
        case "Yield":
            return stored, Yield("held", NOW + timedelta(seconds=5))
        case "ProcessLost":
            holder = "other/" if when == "another process holds the claim" else "he"
            return stored, ProcessLost(holder)
        case "Renew":
            return stored, Renew("held", NOW + timedelta(hours=2))
        case "ProgressReported":
            return stored, ProgressReported("held", 50.0, NOW + timedelta(hours=2))
        case "Cancel":
            return stored, Cancel()
        case "TimeLimit":
            holder = "other/" if when == "another process holds the claim" else "he"
            return stored, TimeLimit("b", 1, 30.0, holder)
        case "Recover":
            if "max_step_attempts" in when:
                stored = stored.model_copy(update={"lost_runs": 2})
            if when == "the same, start later":
                later = NOW + timedelta(hours=1)
                stored = stored.model_copy(update={"requested_start_time": later})
            if "countdown" in when:
                stored = stored.model_copy(update={"claim": None, "lease_until": None})
            if "lease expired" in when or (row.status is S.CANCELLING and when == "stuck"):
                stored = stored.model_copy(update={"lease_until": NOW - timedelta(seconds=1)})
            action = "fail" if "fail" in when else "requeue"
            return stored, Recover(stored, action, 3600.0, 3)
        case "PublishFailed":
            return stored, PublishFailed(1, JobError(type="OperationalError", message="down"))
        case "MessageRejected":
            return stored, MessageRejected(JobError(type="MalformedMessage", message="bad"))
        case "Signalled":
            if row.status is S.SCHEDULED and "not waiting" not in when:
                stored = stored.model_copy(update={"wait": _APPROVAL})
            if when == "already received":
                stored = stored.model_copy(update={"signals": {"ok": 1}})
            return stored, Signalled("ok", {"by": "ana"})
        case "RetryRequested":
            if when == "cancelled before its start time":
                later = NOW + timedelta(hours=1)
                stored = stored.model_copy(update={"requested_start_time": later})
            if when.startswith("a signal wait timed out"):
                timed_out = _APPROVAL.model_copy(update={"until": NOW - timedelta(seconds=1)})
                stored = stored.model_copy(update={"wait": timed_out})
            return stored, RetryRequested()
        case "Published":
            if when.startswith("the operation"):
                stored = stored.model_copy(update={"queued_by": "retry t1"})
            return stored, Published("retry t1")
        case "Park":
            if when.startswith("already parked"):
                stored = stored.model_copy(update={"parked": True})
            return stored, Park("b", 1)
        case "Unpark":
            if when.startswith("not parked"):
                stored = stored.model_copy(update={"parked": True, "waiting_for_slot": True})
            return stored.model_copy(update={"parked": when == "parked"}), Unpark()
        case "WaitForSlot":
            if when.startswith("already parked"):
                stored = stored.model_copy(update={"parked": True})
            return stored, WaitForSlot("b", 1)
        case "SlotGranted":
            waits = when == "waiting for a slot"
            return stored.model_copy(update={"parked": waits, "waiting_for_slot": waits}), (
                SlotGranted()
            )
        case "ParkedChecked":
            return stored.model_copy(update={"parked": when != "not parked"}), ParkedChecked()
    raise AssertionError(row)


@pytest.mark.parametrize("row", LIFECYCLE, ids=lambda r: f"{r.status.name}-{r.event}-{r.when}")
def test_every_row_of_the_lifecycle_is_what_transition_does(row: Row) -> None:
    stored, event = scenario(row)
    after = transition(stored, event, NOW)
    assert (after.status if after is not None else None) is row.to


def test_the_table_has_a_row_for_every_status_and_event() -> None:
    pairs = {(row.status, row.event) for row in LIFECYCLE}
    events = {row.event for row in LIFECYCLE}
    assert len(events) == 24
    assert pairs == {(status, event) for status in S for event in events}


def test_final_jobs_change_only_by_retry() -> None:
    for row in LIFECYCLE:
        if row.status.is_final and row.event != "RetryRequested":
            assert row.to is None, row


def test_a_retry_goes_back_to_the_step_it_stopped_at_with_its_input() -> None:
    error = JobError(type="ValueError", message="boom", step="b")
    stored = _stored(
        S.FAILED,
        error=error,
        initial_input_value={"start": 1},
        last_return_value={"after_a": 2},
        percent_completed=50.0,
        lost_runs=2,
    )
    retried = transition(stored, RetryRequested(), NOW)
    assert retried is not None
    assert (retried.status, retried.current_step_name, retried.steps_completed) == (
        S.QUEUED,
        "b",
        1,
    )
    assert retried.input_value == {"after_a": 2}
    assert (retried.retries, retried.error, retried.errors) == (1, None, [error])
    assert (retried.percent_completed, retried.lost_runs, retried.finished_at) == (50.0, 0, None)
    # A second retry finds it QUEUED: only one of two racing retries is written.
    assert transition(retried, RetryRequested(), NOW) is None


def test_a_parked_job_is_unparked_once() -> None:
    parked = transition(_stored(S.QUEUED), Park("b", 1), NOW)
    assert parked is not None
    assert parked.parked
    assert transition(_stored(S.QUEUED), Park("a", 1), NOW) is None
    unparked = transition(parked, Unpark(), NOW)
    assert unparked is not None
    assert not unparked.parked
    assert transition(unparked, Unpark(), NOW) is None


def test_a_due_job_of_a_paused_workflow_is_released_parked() -> None:
    released = transition(_stored(S.SCHEDULED), Release(frozenset({"wf"})), NOW)
    assert released is not None
    assert (released.status, released.parked) == (S.QUEUED, True)
    other = transition(_stored(S.SCHEDULED), Release(frozenset({"other"})), NOW)
    assert other is not None
    assert not other.parked


def test_claim_holds_a_token_and_lease_and_addresses_the_step_by_name() -> None:
    # v1 [a, b] published step b at index 1; v2 [a, audit, b] has b at index 2.
    stored = _stored(S.QUEUED, claim=None)
    claimed = transition(stored, _claim(step_index=2), NOW)
    assert claimed is not None
    assert (claimed.status, claimed.current_step, claimed.current_step_name) == (S.RUNNING, 2, "b")
    assert (claimed.claim, claimed.lease_until, claimed.workflow_version) == (
        "new",
        NOW + timedelta(hours=1),
        "v2",
    )
    assert claimed.attempt == 1


def test_a_message_for_another_step_or_workflow_is_not_claimed() -> None:
    stored = _stored(S.QUEUED)
    assert transition(stored, _claim(step_name="audit"), NOW) is None
    assert transition(stored, _claim(workflow_name="other"), NOW) is None


def test_an_expired_lease_is_taken_over_and_counted_as_a_lost_run() -> None:
    stored = _stored(S.RUNNING, lease_until=NOW - timedelta(seconds=1))
    taken = transition(stored, _claim(), NOW)
    assert taken is not None
    assert (taken.status, taken.claim, taken.lost_runs, taken.attempt) == (S.RUNNING, "new", 1, 2)


def test_a_claim_given_back_for_a_retry_is_not_a_lost_run() -> None:
    yielded = transition(_stored(S.RUNNING), Yield("held", NOW + timedelta(seconds=5)), NOW)
    assert yielded is not None
    assert yielded.claim is None
    again = transition(yielded, _claim(), NOW)
    assert again is not None
    assert (again.claim, again.lost_runs) == ("new", 0)


def test_the_worker_lost_error_says_how_often() -> None:
    stored = _stored(S.RUNNING, lost_runs=2, lease_until=NOW - timedelta(seconds=1))
    failed = transition(stored, _claim(), NOW)
    assert failed is not None
    assert failed.error is not None
    assert (failed.error.type, failed.error.step) == ("WorkerLost", "b")
    assert "3 times" in failed.error.message


def test_finish_records_its_token_so_a_lost_reply_is_recognised() -> None:
    stored = _stored(S.RUNNING)
    after = stored.model_copy(update={"status": S.QUEUED, "current_step": 2, "steps_completed": 2})
    finished = transition(stored, Finish("held", after), NOW)
    assert finished is not None
    assert (finished.finished_by, finished.claim, finished.lost_runs) == ("held", None, 0)
    # Trying the same write again finds it done: nothing more is written.
    assert transition(finished, Finish("held", after), NOW) is None


def test_a_lost_reply_is_recognised_after_the_job_went_on() -> None:
    # On Redis the next step's message goes with the outcome: by the time the write is tried
    # again, the next step may have run. The run's own timing tells that its write landed.
    stored = _stored(S.RUNNING)
    ran = StepTiming(
        step="b", index=1, started_at=NOW, finished_at=NOW, attempt=1, outcome="QUEUED"
    )
    after = stored.model_copy(
        update={"status": S.QUEUED, "current_step": 2, "steps_completed": 2, "timings": [ran]}
    )
    event = Finish("held", after)
    finished = transition(stored, event, NOW)
    assert finished is not None
    went_on = finished.model_copy(
        update={"status": S.RUNNING, "claim": "next", "finished_by": "next", "steps_completed": 3}
    )
    assert moved_on_from(went_on, event)
    assert not moved_on_from(finished, event)  # not gone on: `already_written` tells
    other_run = went_on.model_copy(update={"timings": [ran.model_copy(update={"attempt": 2})]})
    assert not moved_on_from(other_run, event)  # another run's outcome went on, not this one
    assert not moved_on_from(went_on, _claim())


def test_the_sweep_counts_its_requeues_and_fails_at_the_limit() -> None:
    job = _stored(S.RUNNING, lease_until=NOW - timedelta(seconds=1))
    for expected_runs in (1, 2):
        job = transition(job, Recover(job, "requeue", 60.0, 3), NOW) or job
        assert (job.status, job.lost_runs) == (S.QUEUED, expected_runs)
        job = transition(job, _claim(token=f"run{expected_runs}"), NOW) or job
        assert job.status is S.RUNNING
        job = job.model_copy(update={"lease_until": NOW - timedelta(seconds=1)})
    failed = transition(job, Recover(job, "requeue", 60.0, 3), NOW)
    assert failed is not None
    assert failed.status is S.FAILED
    assert failed.error is not None
    assert failed.error.type == "WorkerLost"
    assert len(failed.recoveries) == 3


def test_the_sweep_leaves_a_job_that_moved_since_it_was_seen() -> None:
    seen = _stored(S.RUNNING)
    moved = seen.model_copy(update={"attempt": 2})
    assert transition(moved, Recover(seen, "requeue", 60.0, 3), NOW) is None


def test_time_limit_fails_only_the_step_it_names() -> None:
    running = _stored(S.RUNNING)
    failed = transition(running, TimeLimit("b", 1, 30.0, "he"), NOW)
    assert failed is not None
    assert failed.error is not None
    assert failed.error.type == "TimeLimitExceeded"
    assert "30 s" in failed.error.message
    assert transition(running, TimeLimit("b", 0, 30.0, "he"), NOW) is None
    assert transition(running, TimeLimit("a", 1, 30.0, "he"), NOW) is None


def test_time_limit_of_a_run_that_holds_no_claim_fails_nothing() -> None:
    # A redelivered copy killed at its time limit while it watched another run's lease.
    running = _stored(S.RUNNING)
    assert transition(running, TimeLimit("b", 1, 30.0, "worker@b/7/"), NOW) is None
    released = running.model_copy(update={"claim": None})
    assert transition(released, TimeLimit("b", 1, 30.0, "he"), NOW) is None


def test_a_reject_that_names_an_old_point_leaves_the_job() -> None:
    error = JobError(type="MalformedMessage", message="bad")
    assert transition(_stored(S.QUEUED), MessageRejected(error, steps_completed=0), NOW) is None
    assert transition(_stored(S.QUEUED), MessageRejected(error, steps_completed=1), NOW) is not None


def test_a_reject_fails_only_the_job_at_the_step_its_message_was_for() -> None:
    error = JobError(type="MalformedMessage", message="bad")
    queued = _stored(S.QUEUED)
    assert transition(queued, MessageRejected(error, None, "ergate.wf.b"), NOW) is not None
    # Another workflow's step, or another step of its own workflow: not its message.
    assert transition(queued, MessageRejected(error, None, "ergate.other.b"), NOW) is None
    assert transition(queued, MessageRejected(error, None, "ergate.wf.a"), NOW) is None
    # A live claim holds the job: the step runs, whatever a bad copy says.
    running = _stored(S.RUNNING)
    assert transition(running, MessageRejected(error, 1, "ergate.wf.b"), NOW) is None
    lapsed = running.model_copy(update={"lease_until": NOW - timedelta(seconds=1)})
    assert transition(lapsed, MessageRejected(error, 1, "ergate.wf.b"), NOW) is not None


def test_the_operation_that_queued_a_job_is_marked_until_a_step_claims_it() -> None:
    retried = transition(_stored(S.FAILED), RetryRequested("t1"), NOW)
    assert retried is not None
    assert retried.queued_by == "retry t1"
    assert queued_by(retried, "retry")
    assert already_written(retried, RetryRequested("t1"))
    assert not already_written(retried, RetryRequested("t2"))
    waiting = _stored(S.SCHEDULED, wait=Wait(step="a", since=NOW, signal="ok"))
    released = transition(waiting, Signalled("ok", None, "t3"), NOW)
    assert released is not None
    assert queued_by(released, "signal ok")
    assert not queued_by(released, "signal other")
    due = transition(_stored(S.SCHEDULED), Release(frozenset(), "t4"), NOW)
    assert due is not None
    assert due.queued_by == "release t4"
    claimed = transition(retried, _claim(), NOW)
    assert claimed is not None
    assert claimed.queued_by is None


def test_not_an_event_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Not a lifecycle event"):
        transition(_stored(S.QUEUED), "Release", NOW)  # type: ignore[arg-type]


def test_docs_show_the_generated_state_diagram() -> None:
    text = CONCEPTS_PAGE.read_text()
    assert f"```mermaid\n{mermaid()}```" in text, (
        "docs/concepts.md's state diagram is stale: paste "
        "ergate_celery.lifecycle.table.mermaid() into its ```mermaid block"
    )


def test_a_signal_that_came_while_the_step_ran_is_kept_by_its_finish() -> None:
    running = _stored(S.RUNNING)
    signalled = transition(running, Signalled("ok", {"by": "ana"}), NOW)
    assert signalled is not None
    assert signalled.status is S.RUNNING
    # The step's outcome was computed from the job as claimed, without the signal.
    after = running.model_copy(update={"status": S.SCHEDULED, "wait": _APPROVAL})
    finished = transition(signalled, Finish("held", after), NOW)
    assert finished is not None
    assert finished.status is S.QUEUED
    assert finished.wait is None
    assert finished.signals == {"ok": {"by": "ana"}}


def test_a_signal_releases_only_the_wait_for_its_name_and_the_first_payload_wins() -> None:
    waiting = _stored(S.SCHEDULED, wait=_APPROVAL)
    other = transition(waiting, Signalled("other", 1), NOW)
    assert other is not None
    assert other.status is S.SCHEDULED
    assert other.wait == _APPROVAL
    released = transition(other, Signalled("ok", "first"), NOW)
    assert released is not None
    assert released.status is S.QUEUED
    assert released.signals == {"other": 1, "ok": "first"}
    assert transition(released, Signalled("ok", "second"), NOW) is None


def test_a_timed_out_wait_fails_with_signal_timeout_naming_the_step() -> None:
    timed_out = _APPROVAL.model_copy(update={"until": NOW})
    failed = transition(_stored(S.SCHEDULED, wait=timed_out), Release(), NOW)
    assert failed is not None
    assert failed.status is S.FAILED
    assert failed.error is not None
    assert failed.error.type == "SignalTimeout"
    assert failed.error.step == "b"
    assert "'ok'" in failed.error.message


def test_a_wait_without_timeout_is_never_released_and_stays_cancellable() -> None:
    forever = _APPROVAL.model_copy(update={"until": None})
    stored = _stored(S.SCHEDULED, wait=forever)
    assert transition(stored, Release(), NOW + timedelta(days=10_000)) is None
    cancelled = transition(stored, Cancel(), NOW)
    assert cancelled is not None
    assert cancelled.status is S.CANCELLED


def test_a_live_lease_is_never_taken_over_nor_requeued() -> None:
    running = _stored(S.RUNNING, lease_until=NOW + timedelta(seconds=5))
    # A redelivered copy, a retry's countdown restored by the broker: the same claim.
    assert transition(running, _claim(), NOW) is None
    assert transition(running, Recover(running, "requeue", 7200.0, 3), NOW) is None
    renewed = transition(running, Renew("held", NOW + timedelta(seconds=30)), NOW)
    assert renewed is not None
    assert renewed.lease_until == NOW + timedelta(seconds=30)
    assert transition(running, Renew("other", NOW + timedelta(seconds=30)), NOW) is None


def test_a_queued_job_is_republished_without_counting_a_run_each_time_later() -> None:
    queued = _stored(S.QUEUED, lost_runs=2)
    holds = []
    now = NOW
    for _ in range(4):
        republished = transition(queued, Recover(queued, "requeue", 60.0, 3, 60.0), now)
        assert republished is not None
        queued = republished
        assert (queued.status, queued.lost_runs, queued.error) == (S.QUEUED, 2, None)
        hold = queued.lease_until - now if queued.lease_until is not None else timedelta(0)
        holds.append(hold.total_seconds())
        # Held back: the sweep leaves it alone until the hold ends.
        assert transition(queued, Recover(queued, "requeue", 60.0, 3, 60.0), now) is None or (
            hold.total_seconds() == 0
        )
        now += hold + timedelta(seconds=60)
    assert "republish: QUEUED" in queued.recoveries[-1]
    assert holds == [0.0, 60.0, 180.0, 420.0]  # twice as long each time: no storm


def test_the_sweep_keeps_its_latest_notes_only() -> None:
    queued = _stored(S.QUEUED)
    for month in range(KEPT_RECOVERIES + 5):
        later = NOW + timedelta(days=100 * month)
        queued = transition(queued, Recover(queued, "requeue", 3600.0, 3), later) or queued
    assert len(queued.recoveries) == KEPT_RECOVERIES
