"""Soak: many jobs with failing steps while workers are killed; no job lost, none forked."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

import pytest

from ergate_celery import JobStatus
from ergate_celery.scheduling.beat import recover_stuck_jobs
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

from .apps import fault_app
from .faults import FAST_REDIS_REDELIVERY, Supervisor, hash_counts, kill_one
from .support import Setup

# 5. Soak: many jobs, failing steps, killed workers -----------------------------------------

SOAK_JOBS = 1200
SOAK_KILL_EVERY = 2.0
SOAK_MAX_KILLS = 12
#: A worker is killed whole (main process and pool) at every fourth kill, a pool process
#: otherwise.
SOAK_WHOLE_WORKER_EVERY = 4
SOAK_VISIBILITY_TIMEOUT = 10
#: No step stored for this long (beyond a killed worker's redelivery): sweep stuck jobs.
SOAK_STALL = SOAK_VISIBILITY_TIMEOUT + 3.0


def _first_failing_step(x: int) -> int | None:
    for index in range(fault_app.SOAK_STEPS):
        if fault_app.soak_fails(x, index):
            return index
    return None


@pytest.mark.slow
@pytest.mark.setup("redis")
def test_soak_killed_workers_lose_no_job_and_never_fork(
    make_setup: Callable[..., Setup],
) -> None:
    import redis

    setup = make_setup(
        "redis",
        broker_transport_options={
            **FAST_REDIS_REDELIVERY,
            "visibility_timeout": SOAK_VISIBILITY_TIMEOUT,
        },
        ergate_stuck_after=5,
        # A killed pool process's step is taken over once its lease expired.
        ergate_lease_seconds=2,
    )
    setup.ergate.register_workflow(fault_app.soak)
    counters = redis.Redis.from_url(setup.conf["broker_url"])
    active_index = setup.ergate.store.index_keys["active"]  # type: ignore[attr-defined]
    rng = random.Random(20261123)
    env = {"ERGATE_FAULT_REDIS": setup.conf["broker_url"]}
    workers = [
        # With worker events on (-E, as Flower needs): announcing must never break a step.
        Supervisor(setup, f"soak{i}-", concurrency=2, env=env, loglevel="WARNING", events=True)
        for i in range(2)
    ]
    began = time.monotonic()
    kills = whole_kills = swept = 0
    try:
        for worker in workers:
            worker.ensure()
        inputs = {}
        for x in range(SOAK_JOBS):
            inputs[str(setup.ergate.submit_job("fault_soak", initial_input_value=x).id)] = x
        submitted = time.monotonic()
        next_kill = submitted
        progress, progressed_at = -1, submitted
        while counters.zcard(active_index):
            now = time.monotonic()
            assert now - began < 220, "the soak did not finish in time"
            for worker in workers:
                worker.ensure()
            if kills < SOAK_MAX_KILLS and now >= next_kill:
                whole = kills % SOAK_WHOLE_WORKER_EVERY == SOAK_WHOLE_WORKER_EVERY - 1
                kill_one(workers, rng, whole)
                whole_kills += whole
                kills += 1
                next_kill = now + SOAK_KILL_EVERY
            stored = counters.hlen(fault_app.COMPLETED_KEY)
            if stored != progress:
                progress, progressed_at = stored, now
            elif now - progressed_at > SOAK_STALL:
                # Nothing moves any more, yet jobs are not final: the periodic sweep's turn.
                print(
                    f"\nsoak: stalled with {counters.zcard(active_index)} live jobs; "
                    f"unacked {counters.hlen('unacked')}, queued "
                    f"{counters.llen(setup.conf['task_default_queue'])}, unacked_mutex ttl "
                    f"{counters.ttl('unacked_mutex')}"
                )
                swept += recover_stuck_jobs(setup.ergate)
                progressed_at = now
            time.sleep(0.2)
        drained = time.monotonic()
    finally:
        for worker in workers:
            worker.close()

    jobs = {job_id: setup.ergate.get_job(job_id) for job_id in inputs}
    started = hash_counts(counters, fault_app.STARTED_KEY)
    completed = hash_counts(counters, fault_app.COMPLETED_KEY)
    published = hash_counts(counters, fault_app.PUBLISHED_KEY)
    republished = hash_counts(counters, fault_app.REPUBLISHED_KEY)
    restarts = sum(worker.restarts for worker in workers)
    reruns = sum(started.values()) - len(started)
    statuses = Counter(job.status.name for job in jobs.values())
    print(
        f"\nsoak: {len(jobs)} jobs x {fault_app.SOAK_STEPS} steps in {drained - began:.1f} s "
        f"(submitted in {submitted - began:.1f} s): {dict(statuses)}; kills {kills} "
        f"({whole_kills} whole workers, {restarts} restarts), step reruns {reruns}, "
        f"jobs recovered by the sweep {swept}, publishes from redelivered messages "
        f"{sum(republished.values())}"
    )

    for job in jobs.values():
        for line in job.recoveries:
            hop = f"{STEP_TASK_ID_PREFIX}{job.id}:{line.split('after ')[1].split(' ')[0]}"
            print(f"soak: job {job.id} recovered ({published[hop]} publish of {hop}): {line}")

    # Nothing doubled: no step's outcome stored twice, no step message published twice by
    # workers that ran its predecessor. A redelivered message cannot know whether its dead
    # worker published the successor, so it may hand it on again (known weakness F); that
    # copy is dropped by the claim, as the outcome counts show.
    assert max(completed.values()) == 1
    assert all(count - republished[hop] <= 1 for hop, count in published.items())
    missing_completed = missing_published = 0
    for job_id, x in inputs.items():
        job = jobs[job_id]
        failing = _first_failing_step(x)
        reached = fault_app.SOAK_STEPS if failing is None else failing + 1
        if failing is None:
            assert job.status is JobStatus.COMPLETED, (job_id, job.status, job.error)
            assert (job.steps_completed, job.last_return_value) == (fault_app.SOAK_STEPS, x)
        else:
            assert job.status is JobStatus.FAILED, (job_id, job.status)
            assert job.error is not None
            assert (job.error.type, job.error.step) == ("PlannedFailureError", f"soak_{failing}")
            assert job.steps_completed == failing
        for index in range(fault_app.SOAK_STEPS):
            step = f"{job_id}:soak_{index}"
            if index < reached:
                assert started[step] >= 1, step
                missing_completed += completed[step] == 0
            else:
                assert (started[step], completed[step]) == (0, 0), step
        for hop in range(1, fault_app.SOAK_STEPS):
            message = f"{STEP_TASK_ID_PREFIX}{job_id}:{hop}"
            if hop < reached:
                # A successor never published: the job was stranded, and the sweep requeued it
                # (or the kill fell between the publish and its count).
                missing_published += published[message] == 0
            else:
                assert published[message] == 0, message
    # A kill loses at most one observation: the count of what its process had just done.
    assert missing_completed + missing_published <= kills + swept
    print(f"soak: observations lost to kills: {missing_completed + missing_published}")
