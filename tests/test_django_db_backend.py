"""Jobs stored through django-celery-results (`result_backend = "django-db"`) on a real worker."""

import threading
from collections.abc import Iterator
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
    JobStatus,
    Workflow,
)

from .services import REDIS_HOST, REDIS_PORT, REDIS_URL, redis_flush, require

django = pytest.importorskip("django")
pytest.importorskip("django_celery_results")

WAIT = 60


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Configure Django once for this process, with a migrated SQLite database."""
    from django.conf import settings
    from django.core.management import call_command

    path = tmp_path_factory.mktemp("django") / "db.sqlite3"
    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["django_celery_results", "ergate_celery.contrib.django"],
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": str(path),
                    "OPTIONS": {"timeout": 30},
                }
            },
            USE_TZ=True,
        )
        django.setup()
    call_command("migrate", verbosity=0)
    return path


@pytest.fixture
def app(django_db: Path) -> Iterator[Celery]:
    require("Redis", REDIS_HOST, REDIS_PORT)
    redis_flush()
    app = Celery("django_db_test", set_as_current=True)
    app.conf.update(
        broker_url=REDIS_URL,
        result_backend="django-db",
        task_default_queue="ergate-django-test",
        worker_hijack_root_logger=False,
    )
    yield app
    from django_celery_results.models import TaskResult

    TaskResult.objects.all().delete()
    redis_flush()
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
    started, release = threading.Event(), threading.Event()
    workflow = Workflow(unique_name="blocking")

    @workflow.step
    def first(x: int) -> int:
        started.set()
        assert release.wait(WAIT)
        return x

    @workflow.step
    def second(x: int) -> int:
        return x

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
