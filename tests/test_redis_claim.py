"""The Redis claim in one round trip: for every kind of record, the claim the script writes is
the claim the Python transition and compare-and-set write (the record parsed, its index
entries, its listing status sets, its TTL); every record outside the script's common case is
left as it was, comes back as read, and ends as the Python path ends it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ergate_celery import Job, JobStatus, Workflow, signals
from ergate_celery.lifecycle.events import Claim
from ergate_celery.lifecycle.transitions import transition
from ergate_celery.operations.submission import new_job
from ergate_celery.stores.base import ACTIVE, SCHEDULED, ClaimedInOne
from ergate_celery.stores.redis import RedisJobStore
from ergate_celery.worker.claiming import claim_in_one
from ergate_celery.worker.runtime import Runtime

from .support import Setup, in_process_worker

#: Values that hold the claim's own key names, a quote, unicode and a big text.
HOSTILE: dict[str, Any] = {
    "claim": None,
    "status": 2,
    "attempt": 0,
    ',"claim":': '"queued_by":null,"deadline":',
    "ü": '日本 "quoted" \\ back',
    "big": "x" * 100_000,
}

SETUPS: dict[str, dict[str, Any]] = {
    "plain": {},
    "key prefix, extended results, expiry rules": {
        "result_backend_transport_options": {"global_keyprefix": "pfx:"},
        "result_extended": True,
        "ergate_expires_by_status": {"FAILED": 7200, "COMPLETED": 60},
        "result_expires": 600,
    },
}


def _workflow() -> Workflow:
    workflow = Workflow(unique_name="claims")

    @workflow.step
    def first(value: Any) -> Any:
        return value

    @workflow.step
    def second(value: Any) -> Any:
        return value

    @workflow.step
    def third(value: Any) -> Any:
        return value

    return workflow


def _setup(make_setup: Callable[..., Setup], name: str) -> tuple[Runtime, RedisJobStore]:
    setup = make_setup("redis", **SETUPS[name])
    setup.ergate.register_workflow(_workflow())
    rt = setup.ergate.runtime
    assert isinstance(rt.store, RedisJobStore)
    return rt, rt.store


def _job(rt: Runtime, job_id: str, **fields: Any) -> Job:
    assert rt.workflow_of is not None
    job = new_job(
        rt.workflow_of("claims"),
        initial_input_value=HOSTILE,
        user_context={"who": "ü", "claim": "x"},
        requested_start_time=None,
        job_id=job_id,
        now=rt.clock(),
        tags={"claim": "null", "status": "2"},
    )
    return job.model_copy(update={"current_step_name": "first", **fields})


def _claim(at: int = 0, step: str = "first", token: str = "host:token", **fields: Any) -> Claim:
    now = datetime.now(UTC)
    return Claim(
        **{
            "workflow_name": "claims",
            "step_name": step,
            "step_index": ["first", "second", "third"].index(step),
            "steps_completed": at,
            "token": token,
            "lease_until": now + timedelta(seconds=90),
            "max_attempts": 3,
            "workflow_version": "v1",
            **fields,
        }
    )


def _state(store: RedisJobStore, job_id: str) -> dict[str, Any]:
    """What a claim may change around a record, besides the record: index entries (their
    kind), listing status sets (with scores), the TTL."""
    client = store.client
    statuses = {
        status.name: client.zscore(store._status_keys[status], job_id) for status in JobStatus
    }
    return {
        "index": {
            kind: client.zscore(store.index_keys[kind], job_id) is not None
            for kind in (SCHEDULED, ACTIVE)
        },
        "statuses": {name: score for name, score in statuses.items() if score is not None},
        "ttl": client.ttl(store._key(job_id)),
    }


def _stored(store: RedisJobStore, job_id: str) -> Job:
    job = store.get(job_id)
    assert job is not None
    return job


def _same(one: Job | None, other: Job | None) -> bool:
    if one is None or other is None:
        return one is other
    # A final record's end is stamped by the store's clock when written.
    stamped = {"id", "finished_at", "duration"}
    left, right = (job.model_dump(exclude=stamped) for job in (one, other))
    assert {k: v for k, v in left.items() if right[k] != v} == {}
    return True


#: Records in the script's common case: (fields, the claim's steps completed and step).
CLAIMED: dict[str, tuple[dict[str, Any], int, str]] = {
    "first step": ({}, 0, "first"),
    "later step, started": (
        {
            "steps_completed": 1,
            "current_step": 1,
            "current_step_name": "second",
            "started_at": datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC),
            "last_return_value": {"claim": None, "status": 2, "attempt": 0, "l": []},
            "percent_completed": 33.333333333333336,
        },
        1,
        "second",
    ),
    "queued by a retry, attempts made": (
        {"queued_by": "retry abc", "attempt": 4, "lease_until": datetime(2026, 1, 1, tzinfo=UTC)},
        0,
        "first",
    ),
    "signals, a deadline after the first step": (
        {
            "steps_completed": 2,
            "current_step": 2,
            "current_step_name": "third",
            "signals": {"claim": {"status": 2}},
            "deadline": datetime(2020, 1, 1, tzinfo=UTC),
            "workflow_version": "old",
        },
        2,
        "third",
    ),
}


@pytest.mark.parametrize("variant", list(SETUPS))
def test_the_script_claims_as_the_python_path_does(
    make_setup: Callable[..., Setup], variant: str
) -> None:
    rt, store = _setup(make_setup, variant)
    for n, (case, (fields, at, step)) in enumerate(CLAIMED.items()):
        by_script, by_python = f"script-{n}", f"python-{n}"
        job = _job(rt, by_script, **fields)
        for job_id in (by_script, by_python):
            store.create(job.model_copy(update={"id": job_id}))
        queued = _stored(store, by_script)
        claim, now = _claim(at, step), rt.clock()

        found = store.claim_in_one(by_script, claim, now)
        after = _claimed_by_python(store, by_python, claim, now)

        assert found is not None, case
        assert found.after is not None, case
        assert found.before == queued, case
        assert _same(found.after, after), case
        assert _same(_stored(store, by_script), _stored(store, by_python)), case
        assert found.after == _stored(store, by_script), case
        assert _state(store, by_script) == _state(store, by_python), case
        assert _state(store, by_script)["statuses"].keys() == {"RUNNING"}
        # The outcome's compare-and-set knows the claimed record without encoding it.
        assert store._digests.of(found.after) is not None


def _claimed_by_python(store: RedisJobStore, job_id: str, claim: Claim, now: datetime) -> Job:
    after = store.update(job_id, lambda stored: transition(stored, claim, now)).after
    assert after is not None
    return after


def _old_field_order(store: RedisJobStore, job: Job) -> None:
    """The record as a version with the model's earlier field order stored it."""
    document = job.model_dump(mode="json")
    first = ["id", "workflow_name", "status", "current_step", "steps_completed"]
    first += ["percent_completed", "initial_input_value", "last_return_value", "user_context"]
    ordered = {key: document[key] for key in first} | document
    result = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)
    raw = (
        f'{{"status": "{job.status.name}", "result": {result}, "traceback": null, '
        f'"children": [], "date_done": null, "task_id": "{job.id}"}}'
    )
    store.client.set(store._key(str(job.id)), raw)


def _running(lease: timedelta) -> dict[str, Any]:
    until = datetime.now(UTC) + lease
    return {"status": JobStatus.RUNNING, "claim": "other:run", "lease_until": until}


#: Records outside the script's common case: (fields, the claim's fields).
FALLING_BACK: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "running, its lease live": (_running(timedelta(minutes=5)), {}),
    "running, its lease expired": (_running(-timedelta(minutes=5)), {}),
    "cancelling": ({**_running(timedelta(minutes=5)), "status": JobStatus.CANCELLING}, {}),
    "other steps completed": ({}, {"steps_completed": 1}),
    "another workflow": ({}, {"workflow_name": "others"}),
    "another step": ({}, {"step_name": "second", "step_index": 1}),
    "a deadline passed": ({"deadline": datetime(2020, 1, 1, tzinfo=UTC)}, {}),
    "a deadline to come": ({"deadline": datetime(2100, 1, 1, tzinfo=UTC)}, {}),
    "no step name (stored before steps were named)": ({"current_step_name": None}, {}),
    "a quote in a claim field": ({"queued_by": 'signal "go" abc'}, {}),
    "final": ({"status": JobStatus.COMPLETED}, {}),
    "old field order": ({}, {}),
}


@pytest.mark.parametrize("case", list(FALLING_BACK))
def test_other_records_fall_back_and_end_as_the_python_path(
    make_setup: Callable[..., Setup], case: str
) -> None:
    rt, store = _setup(make_setup, "plain")
    fields, claim_fields = FALLING_BACK[case]
    by_script, by_python = "script", "python"
    job = _job(rt, by_script, **fields)
    for job_id in (by_script, by_python):
        twin = job.model_copy(update={"id": job_id})
        store.create(twin)
        if case == "old field order":
            _old_field_order(store, twin)
    raw = store.client.get(store._key(by_script))
    stored = _stored(store, by_script)
    claim, now = _claim(**claim_fields), rt.clock()

    assert store.claim_in_one(by_script, claim, now) == ClaimedInOne(stored, None)
    assert store.client.get(store._key(by_script)) == raw

    found = claim_in_one(rt, by_script, claim, now=now, sender="test", task=None)
    expected = rt.apply(by_python, claim, sender="test", now=now)
    assert found is not None
    assert _same(found.before, expected.before)
    assert _same(found.after, expected.after)
    assert _same(_stored(store, by_script), _stored(store, by_python))
    assert _state(store, by_script) == _state(store, by_python)


def test_no_record_and_a_claim_tried_again_after_its_reply_was_lost(
    make_setup: Callable[..., Setup],
) -> None:
    rt, store = _setup(make_setup, "plain")
    claim, now = _claim(), rt.clock()
    assert store.claim_in_one("missing", claim, now) == ClaimedInOne(None, None)
    store.create(_job(rt, "lost-reply"))

    first = claim_in_one(rt, "lost-reply", claim, now=now, sender="test", task=None)
    again = claim_in_one(rt, "lost-reply", claim, now=now, sender="test", task=None)

    assert first is not None
    assert again is not None
    assert again.after == first.after == _stored(store, "lost-reply")
    assert again.before is not None
    assert again.before.status is JobStatus.QUEUED
    assert again.before.started_at is None  # announced as the job's start, as the first was
    # Another run's copy of the message finds the claim held.
    other = claim_in_one(rt, "lost-reply", _claim(token="b:2"), now=now, sender="t", task=None)
    assert other is not None
    assert other.after is None


def test_a_worker_claims_every_step_in_one_round_trip(
    make_setup: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = make_setup("redis")
    setup.ergate.register_workflow(_workflow())
    store = setup.ergate.runtime.store
    assert isinstance(store, RedisJobStore)
    found: list[ClaimedInOne | None] = []
    script = store.claim_in_one

    def noted(job_id: str, claim: Claim, now: datetime) -> ClaimedInOne | None:
        found.append(script(job_id, claim, now))
        return found[-1]

    monkeypatch.setattr(store, "claim_in_one", noted)
    sent: list[tuple[str, str | None]] = []

    def received(signal: Any, job: Job, **kwargs: Any) -> None:
        sent.append((signal.name, job.current_step_name))

    for signal in (signals.job_started, signals.step_started):
        signal.connect(received, weak=False)
    try:
        with in_process_worker(setup.app):
            job = setup.ergate.submit_job("claims", initial_input_value={"claim": None})
            done = setup.ergate.wait_for_job(job.id, timeout=60)
    finally:
        for signal in (signals.job_started, signals.step_started):
            signal.disconnect(received)
    assert (done.status, done.last_return_value) == (JobStatus.COMPLETED, {"claim": None})
    assert [claimed is not None and claimed.after is not None for claimed in found] == [True] * 3
    assert [at.attempt for at in done.timings] == [1, 1, 1]
    assert sent == [
        ("ergate.job_started", "first"),
        ("ergate.step_started", "first"),
        ("ergate.step_started", "second"),
        ("ergate.step_started", "third"),
    ]
