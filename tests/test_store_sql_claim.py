"""The claim in one statement on PostgreSQL against the lifecycle's claim transition: for a
spread of stored records, the statement run on one copy and the Python transition with its
compare-and-set run on another give the same job, the same index entry and listing status,
and a token the step's outcome then compares against in one statement."""

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ergate_celery import Job
from ergate_celery.lifecycle.events import Claim
from ergate_celery.lifecycle.transitions import transition
from ergate_celery.model.job_status import JobStatus

from .pg_statements import recorded
from .support import Setup

NOW = datetime(2026, 12, 3, 7, 0, 0, 123456, tzinfo=UTC)
EARLIER = NOW - timedelta(minutes=5)


def _claim(job: Job, **changes: Any) -> Claim:
    fields: dict[str, Any] = {
        "workflow_name": job.workflow_name,
        "step_name": job.current_step_name or "first",
        "step_index": job.current_step + 1,
        "steps_completed": job.steps_completed,
        "token": "host-1:4f1c2d:ü",
        "lease_until": NOW + timedelta(seconds=30),
        "max_attempts": 3,
        "workflow_version": "v2",
    }
    return Claim(**{**fields, **changes})


def _job(**changes: Any) -> Job:
    fields: dict[str, Any] = {
        "workflow_name": "claims",
        "status": JobStatus.QUEUED,
        "current_step_name": "first",
        "submitted_at": EARLIER,
        "initial_input_value": {"x": 1.5e300, "y": 1e-7, "z": 10**30},
    }
    return Job(**{**fields, **changes})


def _later(**changes: Any) -> Job:
    fields: dict[str, Any] = {
        "steps_completed": 2,
        "current_step": 2,
        "current_step_name": "third",
        "attempt": 4,
        "started_at": EARLIER,
        "step_started_at": EARLIER + timedelta(seconds=1),
        "workflow_version": "v1",
    }
    return _job(**{**fields, **changes})


#: Records the statement claims itself (the common case): first and later steps, set and
#: unset start times, a publish still owed, user values holding the claim's own key names.
CLAIMED: dict[str, Callable[[], Job]] = {
    "first step": _job,
    "later step": _later,
    "queued by an operation": lambda: _later(queued_by="retry 1a2b", lease_until=EARLIER),
    "started, first step again": lambda: _job(started_at=EARLIER, claim=None, attempt=1),
    "user values with the claim's keys": lambda: _later(
        user_context={"claim": "x", "status": 2, "attempt": 9, "started_at": None},
        last_return_value=[{"queued_by": "y", "lease_until": "z"}, '"claim": null'],
        tags={"ключ": "значение ✓"},
    ),
    "unicode": lambda: _later(last_return_value='naïve 🐍 \\ "', current_step_name="étape"),
    "a deadline after the first step": lambda: _later(deadline=EARLIER),
}

#: Records it leaves to the Python transition, which runs on the record it returns.
FALLS_BACK: dict[str, tuple[Callable[[], Job], Callable[[Job], Claim]]] = {
    "running, lease held": (
        lambda: _later(status=JobStatus.RUNNING, claim="other", lease_until=NOW + timedelta(1)),
        _claim,
    ),
    "running, lease expired": (
        lambda: _later(status=JobStatus.RUNNING, claim="other", lease_until=EARLIER),
        _claim,
    ),
    "cancelling": (lambda: _later(status=JobStatus.CANCELLING, claim="other"), _claim),
    "another run": (_later, lambda job: _claim(job, steps_completed=1)),
    "another step": (_later, lambda job: _claim(job, step_name="second")),
    "another workflow": (_later, lambda job: _claim(job, workflow_name="other")),
    "first step, deadline passed": (lambda: _job(deadline=EARLIER), _claim),
    "first step, deadline ahead": (lambda: _job(deadline=NOW + timedelta(hours=1)), _claim),
    # PostgreSQL's JSON functions refuse a string holding NUL.
    "a NUL in a value": (lambda: _later(last_return_value="a \u0000 b"), _claim),
    "scheduled": (
        lambda: _job(status=JobStatus.SCHEDULED, requested_start_time=NOW + timedelta(1)),
        _claim,
    ),
    "completed": (lambda: _later(status=JobStatus.COMPLETED, finished_at=EARLIER), _claim),
}


def _copies(store: Any, make: Callable[[], Job]) -> tuple[Job, Job]:
    made = make()
    key = uuid.uuid4().hex
    python, statement = (made.model_copy(update={"id": f"{key}-{side}"}) for side in "ps")
    store.create(python)
    store.create(statement)
    return python, statement


def _python_claim(store: Any, job: Job, claim: Claim) -> tuple[Job | None, Job | None]:
    return store.update(str(job.id), lambda stored: transition(stored, claim, NOW))


def _rows(store: Any, job_id: str) -> tuple[Any, ...]:
    with store.engine.connect() as conn:
        index = conn.execute(
            sa.select(store.index.c.kind).where(store.index.c.job_id == job_id)
        ).all()
        listing = conn.execute(
            sa.select(store.listing.c.status).where(store.listing.c.job_id == job_id)
        ).all()
        status, done = conn.execute(
            sa.select(store.table.c.status, store.table.c.date_done).where(
                store.table.c.task_id == job_id
            )
        ).one()
    # A job that ended is stamped when written: the two copies at different moments.
    return tuple(index), tuple(listing), status, done is None


def _same(one: Job | None, other: Job | None) -> None:
    assert (one is None) == (other is None)
    if one is not None and other is not None:
        unstamped = {"id": None, "finished_at": None, "duration": None}
        assert one.model_copy(update=unstamped) == other.model_copy(update=unstamped)


@pytest.mark.setup("rabbitmq_postgres")
@pytest.mark.parametrize("case", CLAIMED)
def test_the_statement_claims_as_the_transition_does(setup: Setup, case: str) -> None:
    store: Any = setup.ergate.store
    python, statement = _copies(store, CLAIMED[case])
    claim = _claim(python)
    before, after = _python_claim(store, python, claim)
    with recorded(store.engine) as sent:
        found = store.claim_in_one(str(statement.id), claim, NOW)
    assert len(sent.statements) == 1
    assert found is not None
    assert found.after is not None, case
    _same(found.after, after)
    _same(found.before, before)
    assert store.get(str(statement.id)) == found.after
    assert _rows(store, str(statement.id)) == _rows(store, str(python.id))
    # The outcome compares against the record as PostgreSQL stored it: one statement.
    done = found.after.model_copy(
        update={"status": JobStatus.QUEUED, "claim": None, "steps_completed": 9}
    )
    with recorded(store.engine) as sent:
        updated = store.update(str(statement.id), lambda stored: done, assume=found.after)
    assert updated.after == done
    assert len(sent.statements) == 1


@pytest.mark.setup("rabbitmq_postgres")
@pytest.mark.parametrize("case", FALLS_BACK)
def test_the_statement_returns_the_record_when_the_transition_must_decide(
    setup: Setup, case: str
) -> None:
    store: Any = setup.ergate.store
    make, claim_for = FALLS_BACK[case]
    python, statement = _copies(store, make)
    claim = claim_for(python)
    _, after = _python_claim(store, python, claim)
    found = store.claim_in_one(str(statement.id), claim, NOW)
    assert found is not None
    assert found.after is None, case
    assert found.before == statement  # as stored, untouched
    # The Python transition on the record returned writes with no read before it.
    with recorded(store.engine) as sent:
        again = store.update(
            str(statement.id), lambda stored: transition(stored, claim, NOW), assume=found.before
        )
    _same(again.after, after)
    # One statement: the write, or (nothing to write) the read that confirms the record.
    assert len(sent.statements) == 1
    assert _rows(store, str(statement.id)) == _rows(store, str(python.id))


@pytest.mark.setup("rabbitmq_postgres")
def test_a_missing_record_is_said_in_the_same_round_trip(setup: Setup) -> None:
    store: Any = setup.ergate.store
    found = store.claim_in_one("no-such-job", _claim(_job()), NOW)
    assert found is not None
    assert (found.before, found.after) == (None, None)


@pytest.mark.setup("rabbitmq_postgres")
def test_a_record_near_its_size_limit_is_left_to_the_transition(setup: Setup) -> None:
    store: Any = setup.ergate.store
    job = _later(id=uuid.uuid4().hex)
    store.create(job)
    big = job.model_copy(update={"last_return_value": "x" * (store.max_bytes - 1600)})
    job = store.update(str(job.id), lambda stored: big, assume=job).after
    found = store.claim_in_one(str(job.id), _claim(job), NOW)
    assert found is not None
    assert (found.before, found.after) == (job, None)


@pytest.mark.setup("rabbitmq_postgres")
@pytest.mark.parametrize("rival_claims", [True, False])
def test_a_claim_that_waits_for_another_write_sees_that_write(
    setup: Setup, rival_claims: bool
) -> None:
    store: Any = setup.ergate.store
    job = _later(id=uuid.uuid4().hex, queued_by="retry 1a2b")
    store.create(job)
    # Another claim, or a write that leaves the job QUEUED (its publish noted as done).
    rival = (
        transition(job, _claim(job, token="rival"), NOW)
        if rival_claims
        else job.model_copy(update={"queued_by": None, "republished": 1})
    )
    assert rival is not None
    found: list[Any] = []
    table = store.table
    with store.engine.connect() as conn:
        # The rival's write, not yet committed when this claim arrives.
        conn.execute(
            sa.update(table)
            .where(table.c.task_id == str(job.id))
            .values(status=rival.status.name, result=store._encoded(rival))
        )
        racer = threading.Thread(
            target=lambda: found.append(store.claim_in_one(str(job.id), _claim(job), NOW))
        )
        racer.start()
        racer.join(0.5)
        assert racer.is_alive()  # waiting for the row's lock
        conn.commit()
    racer.join(30.0)
    # It decides on the record as the rival wrote it, not as it stood when it began.
    assert found[0].before == rival
    if rival_claims:
        assert found[0].after is None
    else:
        assert found[0].after == transition(rival, _claim(job), NOW)
