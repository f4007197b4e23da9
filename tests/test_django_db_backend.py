"""Jobs stored through django-celery-results (`result_backend = "django-db"`) on a real worker;
step task results in its admin carry their task name, as every task does with
`result_extended` on (the docs' Django page and the example turn it on)."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.result import AsyncResult

from ergate_celery import (
    DuplicateJobError,
    ErgateCelery,
    InvalidInputError,
    Job,
    JobNotFoundError,
    JobStatus,
    Workflow,
)
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

from .services import RedisService
from .workflows import blocking_workflow

pytest.importorskip("django")
pytest.importorskip("django_celery_results")

WAIT = 60


@pytest.fixture
def app(django_db: Path, redis_service: RedisService) -> Iterator[Celery]:
    redis_service.flush()
    app = Celery("django_db_test", set_as_current=True)
    app.conf.update(
        broker_url=redis_service.url,
        result_backend="django-db",
        task_default_queue="ergate-django-test",
        worker_hijack_root_logger=False,
    )
    yield app
    from django_celery_results.models import TaskResult

    TaskResult.objects.all().delete()
    redis_service.flush()
    app.close()


def _workflow() -> Workflow:
    workflow = Workflow(unique_name="invoice")

    @workflow.step
    def total(lines: list[int]) -> int:
        return sum(lines)

    @workflow.step
    def tax(amount: int) -> float:
        return amount * 1.2

    return workflow


def test_job_record_is_a_task_result_row(app: Celery) -> None:
    from django_celery_results.models import TaskResult

    ergate = ErgateCelery(app)
    ergate.register_workflow(_workflow())
    with start_worker(app, pool="threads", perform_ping_check=False, loglevel="WARNING"):
        job = ergate.submit_job("invoice", initial_input_value=[10, 20])
        done = ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == 36.0
    row = TaskResult.objects.get(task_id=job.id)
    assert row.status == "COMPLETED"
    assert row.task_name == "ergate.invoice"
    result = AsyncResult(job.id, app=app)
    assert result.state == "COMPLETED"
    assert result.result["last_return_value"] == 36.0


def test_cancel_while_running_on_django_db(app: Celery) -> None:
    workflow, started, release = blocking_workflow("blocking", "second")
    ergate = ErgateCelery(app)
    ergate.register_workflow(workflow)
    with start_worker(app, pool="threads", perform_ping_check=False, loglevel="WARNING"):
        job = ergate.submit_job("blocking", initial_input_value=1)
        assert started.wait(WAIT)
        assert ergate.cancel_job(job.id).status is JobStatus.CANCELLING
        release.set()
        assert ergate.wait_for_job(job.id, timeout=WAIT).status is JobStatus.CANCELLED


def test_bad_submissions_leave_no_row(app: Celery) -> None:
    from django_celery_results.models import TaskResult

    ergate = ErgateCelery(app)
    ergate.register_workflow(_workflow())
    first = ergate.submit_job("invoice", initial_input_value=[1], id="inv-1")
    with pytest.raises(DuplicateJobError):
        ergate.submit_job("invoice", initial_input_value=[2], id="inv-1")
    bad: dict[str, Any] = {"initial_input_value": "not a list"}
    with pytest.raises(InvalidInputError, match="input type"):
        ergate.submit_job("invoice", **bad)
    assert list(TaskResult.objects.values_list("task_id", flat=True)) == ["inv-1"]
    assert ergate.get_job("inv-1") == first


def test_workflows_module_of_installed_apps_is_discovered(app: Celery) -> None:
    ergate = ErgateCelery(app)
    assert ergate.workflow("discovered").unique_name == "discovered"
    assert "ergate.discovered.greet" in app.tasks


def test_submit_in_atomic_block_publishes_on_commit(app: Celery) -> None:
    from django.db import transaction

    ergate = ErgateCelery(app)
    with transaction.atomic():
        job = ergate.submit_job("discovered", initial_input_value="ann")
        assert job.status is JobStatus.PENDING
        assert _queued_messages(app) == 0
    assert ergate.get_job(job.id).status is JobStatus.QUEUED
    assert _queued_messages(app) == 1
    with start_worker(app, pool="threads", perform_ping_check=False, loglevel="WARNING"):
        assert ergate.wait_for_job(job.id, timeout=WAIT).last_return_value == "hello ann"


def test_rolled_back_submission_stores_and_publishes_nothing(app: Celery) -> None:

    ergate = ErgateCelery(app)
    job_id = _submit_and_roll_back(ergate, "bob")
    with pytest.raises(JobNotFoundError):
        ergate.get_job(job_id)
    assert _queued_messages(app) == 0


def test_rolled_back_submission_on_another_backend_is_never_published(app: Celery) -> None:
    # The record lives in Redis, outside the Django transaction: it stays PENDING, is never
    # published nor swept as stuck, and expires like a finished result.

    app.conf.result_backend = app.conf.broker_url
    ergate = ErgateCelery(app)
    job_id = _submit_and_roll_back(ergate, "cy")
    assert ergate.get_job(job_id).status is JobStatus.PENDING
    assert _queued_messages(app) == 0
    far = datetime.now(UTC) + timedelta(days=365)
    assert ergate.store.stale(far, 10) == []
    assert ergate.store.due(far, 10) == []
    store: Any = ergate.store
    assert store.client.ttl(store._key(job_id)) > 0


def test_admin_lists_jobs_with_workflow_status_and_progress(app: Celery) -> None:
    from django.contrib.auth.models import User
    from django.test import Client

    ergate = ErgateCelery(app)
    with start_worker(app, pool="threads", perform_ping_check=False, loglevel="WARNING"):
        job = ergate.submit_job("discovered", initial_input_value="dee")
        ergate.wait_for_job(job.id, timeout=WAIT)
    User.objects.filter(username="admin").delete()
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client()
    client.force_login(User.objects.get(username="admin"))
    page = client.get("/admin/ergate_celery/ergatejob/").content.decode()
    assert job.id in page
    assert "discovered" in page
    assert "100%" in page
    assert f"{STEP_TASK_ID_PREFIX}{job.id}:0" not in page  # step task results are not jobs
    detail = client.get(f"/admin/ergate_celery/ergatejob/{TaskResultId.of(job.id)}/change/")
    assert detail.status_code == 200


class TaskResultId:
    @staticmethod
    def of(job_id: str) -> int:
        from django_celery_results.models import TaskResult

        return int(TaskResult.objects.get(task_id=job_id).pk)


def _queued_messages(app: Celery) -> int:
    with app.connection_for_write() as conn:
        try:
            declared = conn.default_channel.queue_declare(
                queue=app.conf.task_default_queue, passive=True
            )
        except Exception:
            return 0
        return int(declared.message_count)


class _RollbackError(Exception):
    pass


def _submit_and_roll_back(ergate: ErgateCelery, value: str) -> str:
    from django.db import transaction

    submitted: list[str] = []
    try:
        with transaction.atomic():
            submitted.append(str(ergate.submit_job("discovered", initial_input_value=value).id))
            raise _RollbackError
    except _RollbackError:
        pass
    return submitted[0]


def test_unfinished_jobs_survive_django_db_cleanup(app: Celery) -> None:
    # django-celery-results' cleanup deletes rows by date_done whatever their status.
    from django_celery_results.models import TaskResult

    app.conf.result_expires = 1
    ergate = ErgateCelery(app)
    far = datetime.now(UTC) + timedelta(days=30)
    scheduled = ergate.submit_job("discovered", initial_input_value="s", requested_start_time=far)
    with start_worker(app, pool="threads", perform_ping_check=False, loglevel="WARNING"):
        finished = ergate.submit_job("discovered", initial_input_value="f")
        ergate.wait_for_job(finished.id, timeout=WAIT)
    queued = ergate.submit_job("discovered", initial_input_value="q")
    TaskResult.objects.filter(task_id=finished.id).update(
        date_done=datetime.now(UTC) - timedelta(seconds=5)
    )
    app.tasks["celery.backend_cleanup"]()
    assert ergate.get_job(scheduled.id).status is JobStatus.SCHEDULED
    assert ergate.get_job(queued.id).status is JobStatus.QUEUED
    with pytest.raises(JobNotFoundError):
        ergate.get_job(finished.id)


def test_a_job_whose_hand_over_hook_never_ran_is_handed_over_by_the_sweep(app: Celery) -> None:
    # An on_commit hook registered before submit_job's raises: Django runs no later hook,
    # so the committed job stays PENDING until the sweep finds it (issue 12, point 7).
    from django.db import transaction

    from ergate_celery.scheduling.beat import recover_stuck_jobs

    ergate = ErgateCelery(app)

    def broken_hook() -> None:
        raise RuntimeError("a hook of the application failed")

    submitted: list[Job] = []

    def submit() -> None:
        with transaction.atomic():
            transaction.on_commit(broken_hook)
            submitted.append(ergate.submit_job("discovered", initial_input_value="dot"))

    with pytest.raises(RuntimeError, match="hook of the application"):
        submit()
    job = submitted[0]
    assert ergate.get_job(job.id).status is JobStatus.PENDING
    assert _queued_messages(app) == 0
    soon = datetime.now(UTC) + timedelta(minutes=1)
    assert recover_stuck_jobs(ergate, soon) == 0  # not before ergate_stuck_after
    later = datetime.now(UTC) + timedelta(hours=2)
    with start_worker(app, pool="threads", perform_ping_check=False, loglevel="WARNING"):
        assert recover_stuck_jobs(ergate, later) == 1
        done = ergate.wait_for_job(job.id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == "hello dot"
    assert "hand over" in done.recoveries[0]


def test_a_robust_hand_over_lets_later_hooks_run(app: Celery) -> None:
    from django.db import transaction

    ergate = ErgateCelery(app)
    ran: list[str] = []
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # publishing the first step fails
    with transaction.atomic():
        job = ergate.submit_job("discovered", initial_input_value="eve")
        transaction.on_commit(lambda: ran.append("later hook"))
    assert ran == ["later hook"]
    assert ergate.get_job(job.id).status is JobStatus.FAILED


def test_admin_task_results_name_the_step_tasks(app: Celery) -> None:
    from django.contrib.auth.models import User
    from django.test import Client
    from django_celery_results.models import TaskResult

    app.conf.result_extended = True
    ergate = ErgateCelery(app)
    with start_worker(app, pool="threads", perform_ping_check=False, loglevel="WARNING"):
        job = ergate.submit_job("discovered", initial_input_value="dee")
        ergate.wait_for_job(job.id, timeout=WAIT)
    step = TaskResult.objects.get(task_id=f"{STEP_TASK_ID_PREFIX}{job.id}:0")
    assert step.task_name == "ergate.discovered.greet"
    assert step.status == "SUCCESS"
    User.objects.filter(username="admin").delete()
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client()
    client.force_login(User.objects.get(username="admin"))
    page = client.get("/admin/django_celery_results/taskresult/").content.decode()
    assert f"{STEP_TASK_ID_PREFIX}{job.id}:0" in page
    assert "ergate.discovered.greet" in page


def test_without_result_extended_no_task_has_a_name(app: Celery) -> None:
    from django_celery_results.models import TaskResult

    @app.task(name="plain_echo", shared=False)
    def plain_echo(x: str) -> str:
        return x

    app.conf.result_extended = False
    ergate = ErgateCelery(app)
    with start_worker(app, pool="threads", perform_ping_check=False, loglevel="WARNING"):
        job = ergate.submit_job("discovered", initial_input_value="dee")
        ergate.wait_for_job(job.id, timeout=WAIT)
        plain = plain_echo.delay("x")
        plain.get(timeout=WAIT)
    # Celery's rule, for a plain task and a step alike: names need result_extended.
    assert TaskResult.objects.get(task_id=plain.id).task_name is None
    assert TaskResult.objects.get(task_id=f"{STEP_TASK_ID_PREFIX}{job.id}:0").task_name is None
