"""The lease a worker renews, and the clock leases are read by, without a server: the
heartbeat renews a claim until its block ends, a redelivered copy watches a lease and tells a
live holder from a lost one, and `StoreClock` carries the store's time with the process's
clock, whatever that one says."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery

from ergate_celery import ErgateCelery, Job, JobStatus
from ergate_celery.lifecycle.events import Claim
from ergate_celery.settings import ErgateSettings
from ergate_celery.stores.clock import StoreClock
from ergate_celery.worker import renewer
from ergate_celery.worker.leases import (
    claim_token,
    lease_expired,
    lease_length,
    let_go,
    renew_every,
)
from ergate_celery.worker.renewer import Heartbeat
from ergate_celery.worker.runtime import Runtime

from ..support import wait_until
from ..workflows import echo_workflow

SERVER = datetime(2030, 1, 1, tzinfo=UTC)


def _claimed(
    ergate: ErgateCelery, token: str = "held", *, register: bool = True
) -> tuple[Runtime, Job]:
    if register:
        ergate.register_workflow(echo_workflow("solo", "only"))
    queued = ergate.submit_job("solo", initial_input_value=1)
    rt = ergate.runtime
    claim = Claim(
        workflow_name="solo",
        step_name="only",
        step_index=0,
        steps_completed=0,
        token=token,
        lease_until=rt.clock() + lease_length(rt.settings),
        max_attempts=3,
        workflow_version=queued.workflow_version or "",
    )
    claimed = rt.apply(str(queued.id), claim, sender="test").after
    assert claimed is not None
    return rt, claimed


def test_the_lease_is_the_shorter_of_lease_seconds_and_stuck_after() -> None:
    assert lease_length(ErgateSettings()) == timedelta(seconds=30)
    short = ErgateSettings(stuck_after=3.0)
    assert (lease_length(short), renew_every(short)) == (timedelta(seconds=3), 1.0)


def test_the_heartbeat_renews_the_claim_until_its_block_ends(memory_app: Celery) -> None:
    memory_app.conf.update(ergate_lease_seconds=0.3)
    ergate = ErgateCelery(memory_app)
    rt, claimed = _claimed(ergate)
    job_id = str(claimed.id)
    with Heartbeat(rt, job_id, "held", "test"):
        renewed = wait_until(
            lambda: (job := ergate.get_job(job_id)).lease_until != claimed.lease_until and job,
            what="a renewal",
        )
    assert renewed.status is JobStatus.RUNNING
    # A lease nobody renews any more is seen to expire; a renewed one is seen alive.
    last = ergate.get_job(job_id)
    assert lease_expired(rt, job_id, last)
    with Heartbeat(rt, job_id, "held", "test"):
        live = wait_until(
            lambda: (job := ergate.get_job(job_id)).lease_until > rt.clock() and job,  # type: ignore[operator]
            what="the lease renewed",
        )
        assert not lease_expired(rt, job_id, live)
    ergate.close()


def _renewers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "ergate-lease-renewer"]


def test_one_thread_renews_every_claim_of_the_process_until_its_block_ends(
    memory_app: Celery,
) -> None:
    memory_app.conf.update(ergate_lease_seconds=0.3)
    ergate = ErgateCelery(memory_app)
    rt, first = _claimed(ergate, "first")
    _, second = _claimed(ergate, "second", register=False)
    jobs = {str(first.id): first, str(second.id): second}
    with (
        Heartbeat(rt, str(first.id), "first", "test"),
        Heartbeat(rt, str(second.id), "second", "test"),
    ):
        for job_id, claimed in jobs.items():
            wait_until(
                lambda job_id=job_id, claimed=claimed: (
                    ergate.get_job(job_id).lease_until != claimed.lease_until
                ),
                what="a renewal of each claim",
            )
        assert len(_renewers()) == 1
    # Neither claim is renewed once its block ended: both leases are seen to expire.
    for job_id in jobs:
        assert lease_expired(rt, job_id, ergate.get_job(job_id))
    assert len(_renewers()) == 1  # it waits for the next claim of the process
    ergate.close()


def test_a_forked_child_renews_its_claims_with_a_thread_of_its_own(memory_app: Celery) -> None:
    memory_app.conf.update(ergate_lease_seconds=0.3)
    ergate = ErgateCelery(memory_app)
    rt, claimed = _claimed(ergate)
    job_id = str(claimed.id)
    with Heartbeat(rt, job_id, "held", "test"):
        parent_renewer = _renewers()[0]
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the parent's thread and claims did not come along
            ok = not renewer._renewer._claims and renewer._renewer._thread is None
            with Heartbeat(rt, job_id, "held", "test"):
                ok = ok and any(t.is_alive() for t in _renewers())
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
        os.close(write)
        answer = os.read(read, 1)
        os.close(read)
        os.waitpid(pid, 0)
    assert answer == b"1"
    assert _renewers() == [parent_renewer]
    ergate.close()


def test_a_watch_that_must_stop_first_tells_neither_expired_nor_renewed(
    memory_app: Celery,
) -> None:
    ergate = ErgateCelery(memory_app)  # a 30 s lease, which nobody renews
    rt, claimed = _claimed(ergate)
    assert lease_expired(rt, str(claimed.id), claimed, give_up_at=time.monotonic() + 0.2) is None
    ergate.close()


def test_the_claim_of_a_dead_pool_process_is_let_go_at_once(memory_app: Celery) -> None:
    ergate = ErgateCelery(memory_app)
    rt, claimed = _claimed(ergate, claim_token("worker@host"))
    job_id = str(claimed.id)
    let_go(rt, job_id, "worker@host", os.getpid() + 1, "test")  # another process: kept
    assert ergate.get_job(job_id).lease_until == claimed.lease_until
    let_go(rt, job_id, "worker@host", os.getpid(), "test")
    lost = ergate.get_job(job_id)
    assert (lost.claim, lost.lease_until) == (claimed.claim, None)
    assert lease_expired(rt, job_id, lost)  # a redelivered copy takes it over at once
    ergate.close()


def test_the_store_clock_follows_the_server_whatever_the_host_says() -> None:
    ahead = timedelta(seconds=60)
    clock = StoreClock(lambda: SERVER, local=lambda: SERVER + ahead)
    assert abs((clock() - SERVER).total_seconds()) < 0.01
    assert clock.offset == -ahead


def test_a_store_without_a_server_keeps_the_process_clock_and_a_failed_read_the_offset() -> None:
    local = StoreClock(lambda: None, local=lambda: SERVER)
    assert local() == SERVER

    answers: list[datetime | Exception] = [SERVER + timedelta(seconds=5), OSError("down")]

    def server() -> datetime:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    clock = StoreClock(server, local=lambda: SERVER)
    assert clock() == SERVER + timedelta(seconds=5)
    clock.refresh()  # the server is down: the last offset stays
    assert clock() == SERVER + timedelta(seconds=5)


def test_a_claim_is_renewed_in_time_whether_or_not_the_sleeping_renewer_is_woken(
    memory_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A renewer of its own: the process's one has seen other tests' leases.
    fresh = renewer._Renewer()
    monkeypatch.setattr(renewer, "_renewer", fresh)
    ergate = ErgateCelery(memory_app)  # a 30 s lease: the idle renewer then sleeps 10 s
    rt, long_held = _claimed(ergate, "long")
    with Heartbeat(rt, str(long_held.id), "long", "test"):
        pass
    wait_until(lambda: fresh._wake_at < float("inf"), what="the renewer asleep")
    # Due before the renewer wakes by itself: it is told.
    short_rt = replace(rt, settings=replace(rt.settings, lease_seconds=0.3))
    _, first = _claimed(ergate, "first", register=False)
    with Heartbeat(short_rt, str(first.id), "first", "test"):
        wait_until(
            lambda: ergate.get_job(str(first.id)).lease_until != first.lease_until,
            what="a renewal of the claim due first",
            timeout=3.0,
        )
    # Now it sleeps at most 0.1 s between looks: a new claim is not told, and renewed in time.
    _, second = _claimed(ergate, "second", register=False)
    with Heartbeat(short_rt, str(second.id), "second", "test"):
        wait_until(
            lambda: ergate.get_job(str(second.id)).lease_until != second.lease_until,
            what="a renewal of the claim added while it slept",
            timeout=3.0,
        )
    ergate.close()
    # Its thread sleeps on for good: named apart, so that the tests counting the process's
    # renewer threads in this pytest process do not count it.
    assert fresh._thread is not None
    fresh._thread.name = "a test's own lease renewer"
