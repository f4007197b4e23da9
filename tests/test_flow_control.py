"""Flow control on real workers: at most one job per tenant in progress across two worker
processes while tenants overlap, every way a job ends frees its slot (a SIGKILLed worker's
too), racing submits of one id make one job, a pause holds a job submitted right after it,
and two beats submit each periodic firing once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery.signals import task_postrun, task_prerun

from ergate_celery import JobStatus
from ergate_celery.model.concurrency import slot_name
from ergate_celery.scheduling.beat import recover_stuck_jobs

from .apps.flow_app import tenants
from .faults import FAST_REDIS_REDELIVERY, kill_worker, worker_process
from .support import ROOT, Setup, in_process_worker, race, wait_until

WAIT = 90
FLOW_SETUPS = ("redis", "rabbitmq_postgres", "django_db")


def _marks(setup: Setup) -> list[list[str]]:
    path = setup.tmp_path / "marks"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _submit(setup: Setup, tenant: str, **order: Any) -> str:
    job = setup.ergate.submit_job(
        "flow_tenant",
        initial_input_value={"tenant": tenant, **order},
        user_context={"tenant": tenant},
    )
    return str(job.id)


def _final(setup: Setup, job_ids: list[str]) -> dict[str, JobStatus]:
    def ended() -> dict[str, JobStatus] | None:
        jobs = {job_id: setup.ergate.get_job(job_id) for job_id in job_ids}
        if all(job.is_final for job in jobs.values()):
            return {job_id: job.status for job_id, job in jobs.items()}
        return None

    result: dict[str, JobStatus] = wait_until(ended, WAIT, what="every job ended")
    return result


@contextmanager
def _workers(setup: Setup) -> Iterator[None]:
    """Two prefork worker processes (on django-db, on this process's SQLite database)."""
    with (
        worker_process(setup, "flow-a", concurrency=2, module="tests.apps.flow_app"),
        worker_process(setup, "flow-b", concurrency=2, module="tests.apps.flow_app"),
    ):
        yield


@pytest.mark.setup(*FLOW_SETUPS)
def test_one_job_per_tenant_runs_at_a_time_across_two_workers_and_every_ending_frees_it(
    setup: Setup,
) -> None:
    setup.ergate.register_workflow(tenants)
    endings = ["fail", "abort", "time_limit", "complete"]
    with _workers(setup):
        jobs = [_submit(setup, f"t{n % 4}") for n in range(16)]
        assert set(_final(setup, jobs).values()) == {JobStatus.COMPLETED}

        # Each way of ending, one after the other on one key: a way that kept its slot
        # would leave every job behind it waiting.
        chain = [_submit(setup, "ends", end=end) for end in endings]
        held = _submit(setup, "ends", seconds=1.5)
        cancelled = _submit(setup, "ends")  # waits behind `held`: cancelled while parked
        last = _submit(setup, "ends")
        wait_until(lambda: setup.ergate.get_job(held).status is JobStatus.RUNNING, WAIT)
        assert setup.ergate.get_job(cancelled).waiting_for_slot
        setup.ergate.cancel_job(cancelled)
        statuses = _final(setup, [*chain, held, cancelled, last])

    expected = {"fail": "FAILED", "abort": "ABORTED", "time_limit": "FAILED"}
    assert [statuses[j].name for j in chain] == [expected.get(e, "COMPLETED") for e in endings]
    # A step killed at its time limit writes no end: its start is left out below.
    killed = {j for j, e in zip(chain, endings, strict=True) if e == "time_limit"}
    limited = [setup.ergate.get_job(j).error for j in killed]
    assert all(error is not None and error.type == "TimeLimitExceeded" for error in limited)
    assert (statuses[held], statuses[cancelled], statuses[last]) == (
        JobStatus.COMPLETED,
        JobStatus.CANCELLED,
        JobStatus.COMPLETED,
    )
    marks = [mark for mark in _marks(setup) if mark[2] not in killed]
    inside: dict[str, int] = {}
    most_tenants_at_once = 0
    for what, tenant, _, _ in marks:
        inside[tenant] = inside.get(tenant, 0) + (1 if what == "start" else -1)
        assert inside[tenant] <= 1, f"two jobs of tenant {tenant} ran at once"
        most_tenants_at_once = max(most_tenants_at_once, sum(inside.values()))
    assert most_tenants_at_once > 1  # different tenants ran side by side
    assert {tenant for _, tenant, _, _ in marks} == {"t0", "t1", "t2", "t3", "ends"}
    store = setup.ergate.runtime.store
    assert all(store.slots(slot_name("flow_tenant", t)).empty for t in ("t0", "ends"))


@pytest.mark.slow
@pytest.mark.setup(*FLOW_SETUPS)
def test_a_sigkilled_worker_keeps_the_slot_until_its_job_ends(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    redis_broker = setup_name != "rabbitmq_postgres"
    options = {"broker_transport_options": FAST_REDIS_REDELIVERY} if redis_broker else {}
    # The killed step runs again once its lease expired. A lease longer than the step's
    # time_limit (2 s): the redelivered copy that waits for it must neither fail the job at
    # that limit nor be dropped, but go back to the queue until the lease expires.
    setup = make_setup(setup_name, ergate_lease_seconds=8, **options)
    setup.ergate.register_workflow(tenants)
    killed = _submit(setup, "k", end="sigkill")
    behind = _submit(setup, "k")
    with worker_process(setup, "flow-k", module="tests.apps.flow_app") as victim:
        wait_until(lambda: any(m[2] == killed for m in _marks(setup)), WAIT)
        kill_worker(victim)
    with worker_process(setup, "flow-r", module="tests.apps.flow_app"):
        # RabbitMQ redelivers at once; Redis after its (shortened) visibility timeout.
        _final(setup, [killed, behind])
    job = setup.ergate.get_job(killed)
    assert job.status is JobStatus.COMPLETED, job.error
    assert setup.ergate.get_job(behind).status is JobStatus.COMPLETED
    starts = [m[2] for m in _marks(setup) if m[0] == "start"]
    assert starts.count(killed) == 2  # the killed step ran again
    assert starts.index(behind) > max(i for i, j in enumerate(starts) if j == killed)
    assert setup.ergate.runtime.store.slots(slot_name("flow_tenant", "k")).empty


_RACE = """
import json, sys, threading
from tests.apps.flow_app import ergate
job_id, callers = sys.argv[1], int(sys.argv[2])
start = threading.Barrier(callers)
def submit():
    start.wait()
    ergate.submit_job("flow_tenant", initial_input_value={"tenant": "race"},
                      user_context={"tenant": "race"}, id=job_id, if_exists="return")
threads = [threading.Thread(target=submit) for _ in range(callers)]
for t in threads: t.start()
for t in threads: t.join()
"""


@pytest.mark.setup(*FLOW_SETUPS)
def test_twenty_racing_submits_of_one_id_make_one_job_and_one_step_run(
    setup: Setup, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup.ergate.register_workflow(tenants)
    job_id = "race-order-17"
    other = None
    setup.ergate.runtime.store.get(job_id)  # the store's tables exist before the race
    if setup.name != "django_db":  # its test database lives in this process only
        env = {**os.environ, "ERGATE_TEST_CONF": json.dumps(setup.conf), "PYTHONPATH": str(ROOT)}
        other = subprocess.Popen([sys.executable, "-c", _RACE, job_id, "10"], cwd=ROOT, env=env)

    def submit() -> None:
        def call() -> None:
            setup.ergate.submit_job(
                "flow_tenant",
                initial_input_value={"tenant": "race"},
                user_context={"tenant": "race"},
                id=job_id,
                if_exists="return",
            )

        if setup.name != "django_db":
            call()
            return
        from django.db import connection, transaction

        try:
            with transaction.atomic():  # handed over when the transaction commits
                call()
        finally:
            connection.close()

    race(*[submit] * (10 if other is not None else 20))
    assert other is None or other.wait(timeout=WAIT) == 0
    monkeypatch.setenv("ERGATE_FAULT_MARKS", str(setup.tmp_path / "marks"))
    with worker():
        assert _final(setup, [job_id]) == {job_id: JobStatus.COMPLETED}
    assert [m[0] for m in _marks(setup) if m[2] == job_id] == ["start", "end"]
    assert [str(j.id) for j in setup.ergate.list_jobs(workflow="flow_tenant").jobs] == [job_id]


@pytest.mark.setup(*FLOW_SETUPS)
def test_a_job_submitted_right_after_pause_returns_starts_only_on_resume(
    setup: Setup, worker: Any
) -> None:
    setup.ergate.register_workflow(tenants)
    store = setup.ergate.runtime.store
    with worker():
        warm = _submit(setup, "p")
        _final(setup, [warm])  # the worker's paused cache is fresh: it would run a job now
        setup.ergate.pause_workflow("flow_tenant")
        held = _submit(setup, "p")
        job = setup.ergate.get_job(held)
        assert (job.status, job.parked) == (JobStatus.QUEUED, True)
        assert setup.ergate.resume_workflow("flow_tenant") == 1
        assert _final(setup, [held]) == {held: JobStatus.COMPLETED}

        # A resume whose caller died after removing the pause, before publishing: the sweep
        # publishes the parked job once it has waited ergate_stuck_after.
        setup.ergate.pause_workflow("flow_tenant")
        stranded = _submit(setup, "p")
        store.set_paused("flow_tenant", False)
        later = datetime.now(UTC) + timedelta(seconds=setup.ergate.settings.stuck_after + 1)
        assert recover_stuck_jobs(setup.ergate, later) == 1
        assert _final(setup, [stranded]) == {stranded: JobStatus.COMPLETED}


@pytest.mark.setup("redis")
def test_two_beats_submit_each_periodic_firing_once(setup: Setup) -> None:
    from .apps.beat_app import tick

    setup.ergate.register_workflow(tick)
    submits: list[str] = []

    def count(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "name", None) == "ergate.submit_job":
            submits.append(str(kwargs.get("task_id")))

    task_prerun.connect(count, weak=False)
    periodic = {"ERGATE_TEST_PERIODIC": "2.0"}
    first = setup.celery("beat", "-s", str(setup.tmp_path / "one"), env=periodic)
    second = setup.celery("beat", "-s", str(setup.tmp_path / "two"), env=periodic)
    try:
        with in_process_worker(setup.app), first, second:

            def fired() -> list[Any] | None:
                jobs = setup.ergate.list_jobs(workflow="tick").jobs
                return jobs if len(jobs) >= 3 and len(submits) > len(jobs) else None

            jobs = wait_until(fired, WAIT, what="three firings, fired by both beats")
    finally:
        task_prerun.disconnect(count)
    # Both beats fired each 2 s slot; each slot has one job, named by its scheduled time.
    ids = [str(job.id) for job in jobs]
    assert all(job_id.startswith("tick@") for job_id in ids)
    assert len(set(ids)) == len(ids)
    seconds = sorted(datetime.fromisoformat(job_id.split("@")[1]).timestamp() for job_id in ids)
    assert all(second % 2 == 0 for second in seconds)


@pytest.mark.setup("django_db")
def test_two_database_schedulers_submit_a_firing_once(setup: Setup, worker: Any) -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    from .apps.beat_app import tick

    setup.ergate.register_workflow(tick)
    every = IntervalSchedule.objects.create(every=2, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="nightly tick",
        task="ergate.submit_job",
        interval=every,
        args=json.dumps(["tick"]),
        kwargs=json.dumps({"initial_input_value": 1, "every": 2}),
    )
    ran: list[str] = []

    def count(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "name", None) == "ergate.submit_job":
            ran.append(str(kwargs.get("task_id")))

    beats = [DatabaseScheduler(app=setup.app) for _ in range(2)]
    task_postrun.connect(count, weak=False)
    try:
        with worker():
            # Both beats fire the entry within one 2 s slot (not at its very end).
            wait_until(lambda: time.time() % 2 < 1.5, 5, what="the start of a 2 s slot")
            for beat in beats:
                beat.apply_entry(beat.schedule["nightly tick"])
            wait_until(lambda: len(ran) == 2, WAIT, what="both firings submitted")
    finally:
        task_postrun.disconnect(count)
    ids = [str(job.id) for job in setup.ergate.list_jobs(workflow="tick").jobs]
    assert len(ids) == 1
    assert ids[0].startswith("nightly_tick@")
