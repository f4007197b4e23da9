"""Apps sharing one result backend (issue 12, point 8): each app's beat and sweep see only its
own job index, and a job whose workflow a deploy removed ends FAILED wherever it is found."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery

from ergate_celery import ErgateCelery, JobStatus
from ergate_celery.scheduling.beat import recover_stuck_jobs, release_due_jobs

from .support import Setup, in_process_worker
from .workflows import echo_workflow

WAIT = 60


@contextmanager
def _other_app(setup: Setup, main: str, **conf: Any) -> Iterator[ErgateCelery]:
    """Another app on the same broker and result database."""
    app = Celery(main, set_as_current=False)
    app.conf.update({**setup.conf, **conf})
    ergate = ErgateCelery(app)
    try:
        yield ergate
    finally:
        ergate.close()
        app.close()


@pytest.mark.setup("redis")
def test_apps_on_one_redis_database_never_release_each_others_jobs(
    make_setup: Callable[..., Setup],
) -> None:
    # No ergate_index_name: each app's index is named after its main name.
    setup = make_setup("redis", ergate_index_name=None)
    setup.ergate.register_workflow(echo_workflow("mine"))
    soon = datetime.now(UTC) + timedelta(seconds=1)
    jobs = [
        setup.ergate.submit_job("mine", initial_input_value=i, requested_start_time=soon)
        for i in range(5)
    ]
    later = soon + timedelta(seconds=5)
    with _other_app(setup, "another_project", ergate_index_name=None) as other:
        other.register_workflow(echo_workflow("theirs"))
        assert release_due_jobs(other, now=later) == 0
        assert recover_stuck_jobs(other, now=later + timedelta(days=1)) == 0
        assert other.store.index_entries("scheduled", later, 100) == []
    # A process of the same app (a web process creating Celery("test_redis") itself) shares it.
    with _other_app(setup, setup.app.main or "", ergate_index_name=None) as same:
        same.register_workflow(echo_workflow("mine"))
        assert len(same.store.index_entries("scheduled", later, 100)) == 5
    with in_process_worker(setup.app):
        assert release_due_jobs(setup.ergate, now=later) == 5
        for job in jobs:
            assert setup.ergate.wait_for_job(job.id, timeout=WAIT).status is JobStatus.COMPLETED


@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_a_job_whose_workflow_a_deploy_removed_ends_failed_at_release_and_sweep(
    setup: Setup,
) -> None:
    setup.ergate.register_workflow(echo_workflow("retired"))
    soon = datetime.now(UTC) + timedelta(seconds=1)
    scheduled = setup.ergate.submit_job("retired", initial_input_value=1, requested_start_time=soon)
    # Queued, but its message is lost (purged): the sweep finds it.
    queued = setup.ergate.submit_job("retired", initial_input_value=2)
    setup.app.control.purge()
    later = soon + timedelta(hours=2)
    # The deployed app (same services, same index) no longer has the workflow.
    with _other_app(setup, "deployed") as deployed, in_process_worker(deployed.app):
        deployed.register_workflow(echo_workflow("current"))
        # Released (SCHEDULED to QUEUED), then failed as its step cannot be published.
        assert release_due_jobs(deployed, now=later) == 1
        assert recover_stuck_jobs(deployed, now=later) == 1
        released, swept = deployed.get_job(str(scheduled.id)), deployed.get_job(str(queued.id))
    for job in (released, swept):
        assert job.status is JobStatus.FAILED
        assert job.error is not None
        assert job.error.type == "UnknownStep"
        assert "retired" in job.error.message
    assert setup.ergate.store.index_entries("scheduled", later, 10) == []
    assert setup.ergate.store.index_entries("active", later, 10) == []
