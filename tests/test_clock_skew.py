"""Times that decide come from the store's clock: a host whose clock runs a minute ahead
neither releases a job before its start time nor takes a healthy step for a lost one.

The skew is that of the test process, where release and the sweep run, through the clock its
store reads the server's time with (`StoreClock.local`, the process's clock)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from ergate_celery import JobStatus
from ergate_celery.scheduling.beat import recover_stuck_jobs, release_due_jobs
from ergate_celery.stores.clock import StoreClock

from .apps import liveness_app
from .faults import step_runs, worker_process
from .support import Setup, wait_until


@contextmanager
def _skewed(setup: Setup, seconds: float) -> Iterator[None]:
    clock = setup.ergate.store.clock
    assert isinstance(clock, StoreClock)
    local = clock.local
    clock.local = lambda: local() + timedelta(seconds=seconds)
    clock.refresh()
    try:
        yield
    finally:
        clock.local = local
        clock.refresh()


@pytest.mark.slow
@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_a_host_ahead_of_the_store_releases_and_sweeps_by_the_store_clock(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name, ergate_stuck_after=1)
    setup.ergate.register_workflow(liveness_app.steady)
    later = datetime.now(UTC) + timedelta(seconds=30)
    with _skewed(setup, 60):
        scheduled = setup.ergate.submit_job(
            "live_steady", initial_input_value=0, requested_start_time=later
        )
        assert scheduled.status is JobStatus.SCHEDULED
        assert setup.ergate.runtime.clock() < later
        assert release_due_jobs(setup.ergate) == 0
    assert setup.ergate.get_job(scheduled.id).status is JobStatus.SCHEDULED
    setup.ergate.cancel_job(scheduled.id)

    with worker_process(setup, "skew", module="tests.apps.liveness_app"), _skewed(setup, 40):
        running = str(setup.ergate.submit_job("live_steady", initial_input_value=1).id)
        wait_until(lambda: step_runs(setup, running, "crunch"), what="the step started")

        def swept_until_done() -> bool:
            assert recover_stuck_jobs(setup.ergate) == 0, "a healthy step was swept"
            return setup.ergate.get_job(running).is_final

        wait_until(swept_until_done, 60, 0.2, what="the step done")
    done = setup.ergate.get_job(running)
    assert done.status is JobStatus.COMPLETED
    assert done.recoveries == []
    assert [run["attempt"] for run in step_runs(setup, running, "crunch")] == [1]
