"""Waiting steps with a real worker: `Sleep` and `WaitForSignal` complete the step and hold the
job SCHEDULED in the due index (no ETA message, no worker slot); `signal_job` releases it at
once; a timed-out wait fails; a signal sent before the wait is kept; bad input changes nothing.

Release runs are called here directly (`release_due_jobs`); a real beat releases a waiting job
in `test_beat.py`, a worker dies after its step raised `WaitForSignal` in `test_worker_loss.py`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Any

import pytest
from celery.signals import before_task_publish

from ergate_celery import (
    InvalidInputError,
    JobNotFoundError,
    JobStateError,
    JobStatus,
    SignalPayload,
    Sleep,
    WaitForSignal,
    WaitPath,
    Workflow,
    signal_job,
)
from ergate_celery import signals as ergate_signals
from ergate_celery.lifecycle.waiting import FOREVER
from ergate_celery.scheduling.beat import release_due_jobs
from ergate_celery.stores.base import SCHEDULED

from .apps import waiting_app
from .support import Setup, in_process_worker, race, wait_until

WAIT = 60


def _waiting(setup: Setup, job_id: str) -> Any:
    return wait_until(
        lambda: (
            (job := setup.ergate.get_job(job_id)).status is JobStatus.SCHEDULED
            and job.wait is not None
            and job
        ),
        WAIT,
        what="the job waits",
    )


@contextmanager
def _published_etas() -> Iterator[list[Any]]:
    """The `eta` header of every message published meanwhile (None when it has none)."""
    etas: list[Any] = []

    def record(headers: Any = None, **kwargs: Any) -> None:
        etas.append((headers or {}).get("eta"))

    before_task_publish.connect(record, weak=False)
    try:
        yield etas
    finally:
        before_task_publish.disconnect(record)


def _register(setup: Setup) -> None:
    for workflow in waiting_app.WORKFLOWS:
        setup.ergate.register_workflow(workflow)


def test_sleep_waits_scheduled_in_the_index_and_release_wakes_it_never_early(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name)
    _register(setup)
    with _published_etas() as etas, in_process_worker(setup.app):
        job = setup.ergate.submit_job("napping", initial_input_value={"seconds": 2})
        waiting = _waiting(setup, str(job.id))
        wait = waiting.wait
        assert wait.signal is None
        assert wait.step == "nap"
        assert wait.until == wait.since + timedelta(seconds=2)
        # The step completed: a wait counts as its return.
        assert (waiting.steps_completed, waiting.percent_completed) == (1, 50.0)
        assert waiting.current_step_name == "woke"
        assert waiting.last_return_value == {"seconds": 2}
        entries = setup.ergate.store.index_entries(SCHEDULED, FOREVER, 10)
        assert [(e.job_id, e.at) for e in entries] == [(str(job.id), wait.until)]
        while datetime.now(UTC) < wait.until - timedelta(seconds=0.3):
            assert release_due_jobs(setup.ergate) == 0
            assert setup.ergate.get_job(str(job.id)).status is JobStatus.SCHEDULED
            time.sleep(0.1)
        released = wait_until(lambda: release_due_jobs(setup.ergate), 10, what="released")
        assert released == 1
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value["woke_at"] >= wait.until.timestamp()
    assert done.wait is None
    assert [timing.outcome for timing in done.timings] == ["SCHEDULED", "COMPLETED"]
    assert etas == [None, None], "no ETA message: the job waits in the store"


def test_signal_releases_the_waiting_job_at_once_and_the_next_step_reads_the_payload(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name)
    _register(setup)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("approval", initial_input_value={"order": 7})
        waiting = _waiting(setup, str(job.id))
        assert waiting.wait.signal == "approved"
        assert waiting.wait.until is None
        assert waiting.percent_completed == 50.0
        # No timeout: indexed, never due; a release run leaves it.
        entries = setup.ergate.store.index_entries(SCHEDULED, FOREVER, 10)
        assert [(e.job_id, e.at) for e in entries] == [(str(job.id), FOREVER)]
        assert release_due_jobs(setup.ergate) == 0
        signalled = signal_job(str(job.id), "approved", {"by": "ana"})
        assert signalled.status is JobStatus.QUEUED
        assert signalled.signals == {"approved": {"by": "ana"}}
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == {"order": 7, "answer": {"by": "ana"}}
    assert (done.steps_completed, done.percent_completed) == (2, 100.0)
    # Signalling a finished job is refused; the job is left as it was.
    with pytest.raises(JobStateError, match="already COMPLETED"):
        setup.ergate.signal_job(str(job.id), "approved", {"by": "bob"})
    assert setup.ergate.get_job(str(job.id)) == done


@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_a_signal_sent_while_the_waiting_step_runs_is_kept_and_the_wait_returns_at_once(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name)
    started, go_on = threading.Event(), threading.Event()
    workflow = Workflow(unique_name="racy")

    @workflow.step(paths=[WaitPath("paid")])
    def charge(x: int) -> int:
        started.set()
        assert go_on.wait(WAIT)
        raise WaitForSignal("paid", timeout=3600, retval=x + 1)

    @workflow.step
    def ship(x: int, paid: Annotated[dict[str, Any] | None, SignalPayload("paid")]) -> Any:
        return {"x": x, "paid": paid}

    setup.ergate.register_workflow(workflow)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("racy", initial_input_value=1)
        assert started.wait(WAIT)
        assert setup.ergate.get_job(str(job.id)).status is JobStatus.RUNNING
        early = setup.ergate.signal_job(str(job.id), "paid", {"amount": 5})
        assert early.status is JobStatus.RUNNING, "kept, not a release"
        go_on.set()
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == {"x": 2, "paid": {"amount": 5}}
    assert [timing.step for timing in done.timings] == ["charge", "ship"]


def test_a_wait_past_its_timeout_fails_the_job_with_signal_timeout(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name)
    _register(setup)
    failed: list[Any] = []
    receiver = lambda sender, job, **kw: failed.append((sender, job.id))  # noqa: E731
    ergate_signals.job_failed.connect(receiver, weak=False)
    try:
        with in_process_worker(setup.app):
            job = setup.ergate.submit_job("approval", initial_input_value={"timeout": 1})
            waiting = _waiting(setup, str(job.id))
            assert waiting.wait.until == waiting.wait.since + timedelta(seconds=1)
            wait_until(
                lambda: (
                    release_due_jobs(setup.ergate) == 0
                    and setup.ergate.get_job(str(job.id)).is_final
                ),
                10,
                what="a release run ends the wait",
            )
            done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    finally:
        ergate_signals.job_failed.disconnect(receiver)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.type == "SignalTimeout"
    assert done.error.step == "ask"
    assert "'approved'" in done.error.message
    assert failed == [("ergate.release_scheduled_jobs", job.id)]
    assert setup.ergate.store.index_entries(SCHEDULED, FOREVER, 10) == []
    with pytest.raises(JobStateError):
        signal_job(str(job.id), "approved")


def test_cancel_a_waiting_job(setup_name: str, make_setup: Callable[..., Setup]) -> None:
    setup = make_setup(setup_name)
    _register(setup)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("approval", initial_input_value={})
        _waiting(setup, str(job.id))
        cancelled = setup.ergate.cancel_job(str(job.id))
        assert cancelled.status is JobStatus.CANCELLED
        with pytest.raises(JobStateError):
            setup.ergate.signal_job(str(job.id), "approved")
    assert setup.ergate.get_job(str(job.id)).steps_completed == 1
    assert setup.ergate.store.index_entries(SCHEDULED, FOREVER, 10) == []


@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_two_signals_at_once_release_the_job_once_and_the_first_payload_stays(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name)
    _register(setup)
    with _published_etas() as published:
        with in_process_worker(setup.app):
            job = setup.ergate.submit_job("approval", initial_input_value={})
            _waiting(setup, str(job.id))
        # No worker while both signals race: the job cannot finish between them (a signal to
        # a finished job is a JobStateError, rightly).
        replies: list[Any] = []

        def send(who: str) -> None:
            replies.append(setup.ergate.signal_job(str(job.id), "approved", {"by": who}))

        race(partial(send, "ana"), partial(send, "bob"))
        with in_process_worker(setup.app):
            done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert len(published) == 2, "the first step and `decide`, published once"
    answer = done.last_return_value["answer"]
    assert answer in ({"by": "ana"}, {"by": "bob"})
    assert done.signals == {"approved": answer}
    assert [reply.signals["approved"] for reply in replies] == [answer, answer]


@pytest.mark.setup("redis")
def test_job_waiting_and_job_signalled_are_announced(make_setup: Callable[..., Setup]) -> None:
    setup = make_setup("redis")
    _register(setup)
    heard: list[tuple[str, str, Any]] = []

    def waiting(sender: str, job: Any, **kwargs: Any) -> None:
        heard.append(("waiting", sender, job.wait.signal))

    def signalled(sender: str, job: Any, **kwargs: Any) -> None:
        heard.append(("signalled", sender, job.status.name))

    ergate_signals.job_waiting.connect(waiting, weak=False)
    ergate_signals.job_signalled.connect(signalled, weak=False)
    try:
        with in_process_worker(setup.app):
            job = setup.ergate.submit_job("approval", initial_input_value={})
            _waiting(setup, str(job.id))
            setup.ergate.signal_job(str(job.id), "approved", True)
            setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    finally:
        ergate_signals.job_waiting.disconnect(waiting)
        ergate_signals.job_signalled.disconnect(signalled)
    assert heard == [
        ("waiting", "ergate.approval.ask", "approved"),
        ("signalled", "ergate.signal_job", "QUEUED"),
    ]


@pytest.mark.setup("redis")
def test_signal_job_bad_input_is_refused_and_changes_nothing(
    make_setup: Callable[..., Setup],
) -> None:
    setup = make_setup("redis", ergate_max_payload_bytes=2000)
    _register(setup)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("approval", initial_input_value={})
        waiting = _waiting(setup, str(job.id))
    job_id = str(job.id)
    bad: list[tuple[str, Any, type[Exception], str]] = [
        ("", None, InvalidInputError, "signal name"),
        ("x" * 65, None, InvalidInputError, "signal name"),
        ("two words", None, InvalidInputError, "signal name"),
        ("approved", {"when": datetime.now(UTC)}, InvalidInputError, "must be JSON"),
        ("approved", {"nan": float("nan")}, InvalidInputError, "must be JSON"),
        ("approved", (1, 2), InvalidInputError, "round trip"),
        ("approved", {1: "a"}, InvalidInputError, "round trip"),
        ("approved", "x" * 3000, InvalidInputError, "ergate_max_payload_bytes"),
    ]
    for name, payload, error, words in bad:
        with pytest.raises(error, match=words):
            setup.ergate.signal_job(job_id, name, payload)
    with pytest.raises(InvalidInputError, match="signal name"):
        setup.ergate.signal_job(job_id, 7, None)  # type: ignore[arg-type]
    with pytest.raises(JobNotFoundError):
        setup.ergate.signal_job("no-such-job", "approved", None)
    assert setup.ergate.get_job(job_id) == waiting


@pytest.mark.setup("redis")
def test_a_step_raising_a_bad_sleep_fails_with_the_reason(
    make_setup: Callable[..., Setup],
) -> None:
    setup = make_setup("redis")
    workflow = Workflow(unique_name="bad_sleep")

    @workflow.step
    def nap(x: int) -> int:
        raise Sleep(seconds=-x)

    @workflow.step
    def after(x: int) -> int:
        return x

    setup.ergate.register_workflow(workflow)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("bad_sleep", initial_input_value=3)
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.type == "InvalidInputError"
    assert "-3" in done.error.message
    assert done.wait is None


@pytest.mark.setup("redis")
def test_a_wait_from_the_last_step_completes_the_job(make_setup: Callable[..., Setup]) -> None:
    setup = make_setup("redis")
    workflow = Workflow(unique_name="last_wait")

    @workflow.step
    def only(x: int) -> int:
        raise Sleep(seconds=3600, retval=x)

    setup.ergate.register_workflow(workflow)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("last_wait", initial_input_value=3)
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert (done.last_return_value, done.percent_completed) == (3, 100.0)


@pytest.mark.setup("redis")
def test_cli_signal_and_show(make_setup: Callable[..., Setup]) -> None:
    setup = make_setup("redis")
    _register(setup)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("approval", initial_input_value={"timeout": 600})
        waiting = _waiting(setup, str(job.id))
        shown = setup.run_celery("ergate", "show", str(job.id), module="tests.apps.waiting_app")
        assert shown.returncode == 0, shown.stderr
        until = waiting.wait.until.isoformat()
        assert f"waits for signal 'approved', until {until}" in shown.stdout
        bad = setup.run_celery(
            "ergate", "signal", str(job.id), "approved", "--payload", "{nope",
            module="tests.apps.waiting_app",
        )  # fmt: skip
        assert bad.returncode == 2
        assert "not valid JSON" in bad.stderr
        sent = setup.run_celery(
            "ergate", "signal", str(job.id), "approved", "--payload", '{"by": "cli"}',
            module="tests.apps.waiting_app",
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.strip() == "QUEUED"
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    assert done.last_return_value["answer"] == {"by": "cli"}
    again = setup.run_celery(
        "ergate", "signal", str(job.id), "approved", module="tests.apps.waiting_app"
    )
    assert again.returncode == 1
    assert "already COMPLETED" in again.stderr
    unknown = setup.run_celery("ergate", "signal", "nope", "x", module="tests.apps.waiting_app")
    assert unknown.returncode == 2
    assert "No job with id 'nope'" in unknown.stderr


def test_a_waiting_job_is_listed_and_a_timed_out_wait_is_retried_as_a_wait(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name)
    _register(setup)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("approval", initial_input_value={"timeout": 60})
        waiting = _waiting(setup, str(job.id))
        listed = setup.ergate.list_jobs(status=JobStatus.SCHEDULED, workflow="approval")
        assert [j.id for j in listed.jobs] == [job.id]
        with pytest.raises(JobStateError):
            setup.ergate.retry_job(str(job.id))  # waiting is not stopped
        late = waiting.wait.until + timedelta(seconds=1)
        assert release_due_jobs(setup.ergate, late) == 0
        failed = setup.ergate.get_job(str(job.id))
        assert failed.error is not None
        assert (failed.status, failed.error.type) == (JobStatus.FAILED, "SignalTimeout")
        retried = setup.ergate.retry_job(str(job.id))
        # It stopped waiting for "approved": the retry waits for it again, as long as before.
        assert retried.status is JobStatus.SCHEDULED
        assert retried.wait is not None
        assert retried.wait.signal == "approved"
        assert retried.wait.until - retried.wait.since == timedelta(seconds=60)
        assert retried.wait.until > datetime.now(UTC)
        setup.ergate.signal_job(str(job.id), "approved", {"by": "ana"})
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value["answer"] == {"by": "ana"}
    assert (done.retries, [e.type for e in done.errors]) == (1, ["SignalTimeout"])
