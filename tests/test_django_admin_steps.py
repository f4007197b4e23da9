"""Step task results in django-celery-results' admin carry their task name, as every task
does with `result_extended` on (the README's Django section and the example turn it on)."""

from celery import Celery
from celery.contrib.testing.worker import start_worker

from ergate_celery import ErgateCelery
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

from .test_django_db_backend import app, django_db  # noqa: F401 - the django-db fixtures

WAIT = 60


def test_admin_task_results_name_the_step_tasks(app: Celery) -> None:  # noqa: F811
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


def test_without_result_extended_no_task_has_a_name(app: Celery) -> None:  # noqa: F811
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
