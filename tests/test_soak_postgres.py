"""Kill soaks on PostgreSQL: workers SIGKILLed again and again while their database connections
are cut (`pg_terminate_backend`), with a RabbitMQ broker and with a Redis one. Every job ends
COMPLETED, none is left behind, no step's outcome is stored twice, and no step of a job ever
runs in two live processes at once (each step notes the processes running it, see
`fault_app.overlap`).

In the suite each soak runs `SOAK_JOBS` jobs of four 0.25 s steps with up to `SOAK_MAX_KILLS`
kills, about a minute each on two cores, sweeping every second as beat would. One step in
twenty runs 4 s, longer than the 3 s lease and `ergate_stuck_after`: only its renewals,
through the cut connections, keep the sweep from running it a second time at once.
`ERGATE_SOAK_JOBS` and `ERGATE_SOAK_KILLS` size it up: 300 jobs and 30 kills is the size of
the attack these soaks replay.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from ergate_celery import JobStatus
from ergate_celery.scheduling.beat import recover_stuck_jobs

from .apps import fault_app
from .faults import FAST_REDIS_REDELIVERY, Supervisor, hash_counts, kill_one
from .services import PostgresService, RedisService
from .support import Setup

SOAK_JOBS = int(os.environ.get("ERGATE_SOAK_JOBS", "40"))
SOAK_MAX_KILLS = int(os.environ.get("ERGATE_SOAK_KILLS", "8"))
SOAK_KILL_EVERY = 2.5
#: Seconds between two cuts of every database connection of the workers.
SOAK_CUT_EVERY = 1.0
#: A worker is killed whole (main process and pool) at every third kill, a pool process
#: otherwise.
SOAK_WHOLE_WORKER_EVERY = 3
#: Seconds between two sweeps, as beat's stuck-job check would run them: a step whose lease is
#: not renewed is taken over `ergate_stuck_after` (3 s) after its last renewal.
SOAK_SWEEP_EVERY = 1.0
#: The soak fails if it has not drained by then (generous: the machine is shared).
SOAK_LIMIT = 60 + SOAK_JOBS * 2.0


def _cut_connections(postgres: PostgresService, application_name: str) -> int:
    """Terminate every PostgreSQL backend of the workers; how many it terminated."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres.url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": application_name},
            ).scalars()
            return sum(bool(row) for row in rows)
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["rabbitmq", "redis"])
def test_soak_killed_workers_and_cut_postgres_connections(
    broker: str,
    make_setup: Callable[..., Setup],
    redis_service: RedisService,
    postgres_service: PostgresService,
) -> None:
    import redis

    # The workers' connections carry a name of their own: only they are cut, not this
    # process's, nor those of other test runs on the same server.
    application_name = f"ergate-soak-{uuid.uuid4().hex[:8]}"
    extra: dict[str, Any] = {}
    if broker == "redis":
        redis_service.flush()
        extra = {
            "broker_url": redis_service.url,
            "broker_transport_options": {**FAST_REDIS_REDELIVERY, "visibility_timeout": 8},
        }
    setup = make_setup(
        "rabbitmq_postgres",
        # A step not renewed for 3 s is taken over: by the sweep, or by its message come back.
        ergate_stuck_after=3,
        ergate_lease_seconds=3,
        # A 4 s step is hit by a kill about one time in three here: three such runs in a row
        # would end its job WorkerLost, as they should, and not COMPLETED.
        ergate_max_step_attempts=20,
        **extra,
    )
    setup.conf["database_engine_options"] = {"connect_args": {"application_name": application_name}}
    setup.ergate.register_workflow(fault_app.overlap)
    counters = redis.Redis.from_url(redis_service.url)
    for key in (fault_app.STARTED_KEY, fault_app.COMPLETED_KEY, fault_app.OVERLAPS_KEY):
        counters.delete(key)
    rng = random.Random(20261203)
    env = {"ERGATE_FAULT_REDIS": redis_service.url}
    workers = [
        Supervisor(setup, f"pgsoak{i}-", concurrency=2, env=env, loglevel="WARNING")
        for i in range(2)
    ]
    began = time.monotonic()
    kills = whole_kills = cuts = cut_backends = swept = 0
    try:
        for worker in workers:
            worker.ensure()
        inputs = {}
        for x in range(SOAK_JOBS):
            inputs[str(setup.ergate.submit_job("fault_overlap", initial_input_value=x).id)] = x
        submitted = time.monotonic()
        next_kill, next_cut = submitted + SOAK_KILL_EVERY, submitted + SOAK_CUT_EVERY
        live = set(inputs)
        next_sweep = submitted + SOAK_SWEEP_EVERY
        while live:
            now = time.monotonic()
            assert now - began < SOAK_LIMIT, f"the soak did not finish: {len(live)} jobs left"
            for worker in workers:
                worker.ensure()
            if kills < SOAK_MAX_KILLS and now >= next_kill:
                whole = kills % SOAK_WHOLE_WORKER_EVERY == SOAK_WHOLE_WORKER_EVERY - 1
                kill_one(workers, rng, whole)
                whole_kills += whole
                kills += 1
                next_kill = now + SOAK_KILL_EVERY
            if kills < SOAK_MAX_KILLS and now >= next_cut:
                cut_backends += _cut_connections(postgres_service, application_name)
                cuts += 1
                next_cut = now + SOAK_CUT_EVERY
            live -= {job_id for job_id in live if setup.ergate.get_job(job_id).is_final}
            if now >= next_sweep:
                swept += recover_stuck_jobs(setup.ergate)
                next_sweep = now + SOAK_SWEEP_EVERY
            time.sleep(0.3)
        drained = time.monotonic()
    finally:
        for worker in workers:
            worker.close()

    jobs = {job_id: setup.ergate.get_job(job_id) for job_id in inputs}
    started = hash_counts(counters, fault_app.STARTED_KEY)
    completed = hash_counts(counters, fault_app.COMPLETED_KEY)
    overlaps = hash_counts(counters, fault_app.OVERLAPS_KEY)
    restarts = sum(worker.restarts for worker in workers)
    statuses = Counter(job.status.name for job in jobs.values())
    print(
        f"\npg soak ({broker} broker): {len(jobs)} jobs x {fault_app.OVERLAP_STEPS} steps in "
        f"{drained - began:.1f} s (submitted in {submitted - began:.1f} s): {dict(statuses)}; "
        f"kills {kills} ({whole_kills} whole workers, {restarts} restarts), connection cuts "
        f"{cuts} ({cut_backends} backends), step reruns "
        f"{sum(started.values()) - len(started)}, jobs recovered by the sweep {swept}"
    )

    assert not overlaps, f"steps ran in two live processes at once: {dict(overlaps)}"
    assert max(completed.values()) == 1, "a step's outcome was stored twice"
    for job_id, x in inputs.items():
        job = jobs[job_id]
        assert job.status is JobStatus.COMPLETED, (job_id, job.status, job.error, job.recoveries)
        assert (job.steps_completed, job.last_return_value) == (
            fault_app.OVERLAP_STEPS,
            x + fault_app.OVERLAP_STEPS,
        )
    assert cut_backends > 0, "no connection of a worker was cut"
