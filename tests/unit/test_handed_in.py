"""What `ErgateCelery(app)` hands in when it installs beat's schedules, `JobResult` and the
overdue watch: each reads that app's runtime, with no lookup through the binding, and an app
without an ErgateCelery gets an error that says what to do."""

from __future__ import annotations

import pytest
from celery import Celery

from ergate_celery import ErgateCelery, ErgateError, JobFailedError, JobResult, JobStatus
from ergate_celery.scheduling.index_schedule import IndexSchedule
from ergate_celery.stores.base import SCHEDULED

from ..workflows import echo_workflow


def _finished(ergate: ErgateCelery, status: JobStatus) -> str:
    ergate.register_workflow(echo_workflow("solo"))
    job = ergate.submit_job("solo", initial_input_value=1)
    ergate.store.update(str(job.id), lambda stored: stored.model_copy(update={"status": status}))
    return str(job.id)


def test_a_job_result_made_directly_reads_through_its_apps_runtime(
    memory_ergate: ErgateCelery, memory_app: Celery
) -> None:
    done = _finished(memory_ergate, JobStatus.COMPLETED)
    assert JobResult(done, app=memory_app).get(timeout=1)["status"] == JobStatus.COMPLETED
    assert memory_app.AsyncResult(done).get(timeout=1)["id"] == done


def test_a_failed_jobs_result_raises_job_failed(
    memory_ergate: ErgateCelery, memory_app: Celery
) -> None:
    failed = _finished(memory_ergate, JobStatus.FAILED)
    with pytest.raises(JobFailedError, match=f"Job '{failed}' FAILED") as raised:
        memory_app.AsyncResult(failed).get(timeout=1)
    assert raised.value.job.status is JobStatus.FAILED


def test_a_job_result_of_an_app_without_ergate_says_what_to_do(
    memory_ergate: ErgateCelery, memory_app: Celery
) -> None:
    done = _finished(memory_ergate, JobStatus.COMPLETED)
    bare = Celery("bare", set_as_current=False, backend=memory_app.conf.result_backend)
    bare.conf.result_backend_transport_options = memory_app.conf.result_backend_transport_options
    with pytest.raises(ErgateError, match=r"has no ErgateCelery to read it: create ErgateCelery"):
        JobResult(done, app=bare).get(timeout=1)


def test_beats_schedules_read_the_store_served_for_their_app(
    memory_ergate: ErgateCelery, memory_app: Celery
) -> None:
    schedule = IndexSchedule(SCHEDULED, 1.0, app=memory_app)
    assert schedule.store() is memory_ergate.store


def test_a_schedule_of_an_app_without_ergate_says_what_to_do() -> None:
    bare = Celery("bare", set_as_current=False)
    with pytest.raises(ErgateError, match="No job index is served for Celery app 'bare'"):
        IndexSchedule(SCHEDULED, 1.0, app=bare).store()


def test_the_overdue_watch_reads_its_apps_runtime(
    memory_ergate: ErgateCelery, memory_app: Celery
) -> None:
    [watch] = [step for step in memory_app.steps["worker"] if step.__name__ == "OverdueWatch"]
    assert watch.runtime() is memory_ergate.runtime
    assert watch.name == "ergate_celery.scheduling.overdue.OverdueWatch"
