"""The Django admin's job records on django-db: filters, search by id and tags, the retry and
cancel actions, no bulk delete of unfinished jobs, and a job page that reads as a job."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from ergate_celery import ErgateCelery, JobStatus

from .test_django_console import (  # noqa: F401 - the fixtures
    WAIT,
    _client,
    _failed_and_completed,
    _worker,
    django_db,
    ergate,
)

CHANGELIST = "/admin/ergate_celery/ergatejob/"
on_django_db = pytest.mark.parametrize("ergate", ["django_db"], indirect=True)


def _admin() -> object:
    from django.contrib.auth.models import User
    from django.test import Client

    # The process's Django database is shared by every module that runs in it: others'
    # admin tests may have left their "admin" (in any order, with --dist worksteal).
    User.objects.filter(username="admin").delete()
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client()
    client.force_login(User.objects.get(username="admin"))
    return client


def _row_id(job_id: str) -> int:
    from django_celery_results.models import TaskResult

    return int(TaskResult.objects.get(task_id=job_id).pk)


def _listed(page: str) -> list[str]:
    return re.findall(r'<th class="field-task_id"><a href="[^"]+">([^<]+)</a>', page)


@on_django_db
def test_admin_filters_and_searches_jobs(ergate: ErgateCelery) -> None:  # noqa: F811
    failed, done = _failed_and_completed(ergate)
    client: object = _admin()
    get = client.get  # type: ignore[attr-defined]
    page = get(CHANGELIST).content.decode()
    assert _listed(page) == [done, failed]
    assert '<td class="field-status_name">FAILED</td>' in page  # names, not numbers
    assert '<td class="field-step">#0 check</td>' in page
    assert _listed(get(CHANGELIST, {"status": "FAILED"}).content.decode()) == [failed]
    assert _listed(get(CHANGELIST, {"workflow": "flaky"}).content.decode()) == [done, failed]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d 00:00:00+00:00")
    assert _listed(get(CHANGELIST, {"date_created__gte": tomorrow}).content.decode()) == []
    assert _listed(get(CHANGELIST, {"q": failed[:8]}).content.decode()) == [failed]
    assert _listed(get(CHANGELIST, {"q": "order=A-2"}).content.decode()) == [done]
    assert _listed(get(CHANGELIST, {"q": "A-1"}).content.decode()) == [failed]
    assert _listed(get(CHANGELIST, {"q": "order=nope"}).content.decode()) == []


@on_django_db
def test_admin_job_page_reads_as_a_job(ergate: ErgateCelery) -> None:  # noqa: F811
    failed, _ = _failed_and_completed(ergate)
    client: object = _admin()
    page = client.get(f"{CHANGELIST}{_row_id(failed)}/change/").content.decode()  # type: ignore[attr-defined]
    assert f"<h2>flaky job {failed} (FAILED)</h2>" in page  # not "<Task: …>"
    assert 'data-field="status">FAILED<' in page
    assert '<progress max="100" value="0.0">' in page
    assert 'data-field="step">#0 check' in page
    assert "RuntimeError</strong>: warehouse offline" in page
    assert "Traceback (most recent call last)" in page
    assert '<div class="bar failed"' in page
    assert '"workflow_name": "flaky"' not in page  # not the stored JSON


@on_django_db
def test_admin_actions_retry_and_cancel(ergate: ErgateCelery) -> None:  # noqa: F811
    failed, done = _failed_and_completed(ergate)
    later = ergate.submit_job(
        "flaky", initial_input_value="C-1", requested_start_time=datetime.now(UTC) + timedelta(1)
    )
    client: object = _admin()
    post = client.post  # type: ignore[attr-defined]
    with _worker(ergate):
        answer = post(
            CHANGELIST,
            {"action": "retry_jobs", "_selected_action": [_row_id(failed), _row_id(done)]},
            follow=True,
        ).content.decode()
        assert ergate.wait_for_job(failed, timeout=WAIT).status is JobStatus.COMPLETED
    assert "1 job retried." in answer
    assert "is COMPLETED; only FAILED, ABORTED or CANCELLED jobs can be retried" in answer
    answer = post(
        CHANGELIST,
        {"action": "cancel_jobs", "_selected_action": [_row_id(str(later.id)), _row_id(done)]},
        follow=True,
    ).content.decode()
    assert "1 job cancelled." in answer
    assert "had already ended: COMPLETED" in answer
    assert ergate.get_job(str(later.id)).status is JobStatus.CANCELLED


@on_django_db
def test_admin_deletes_no_unfinished_job(ergate: ErgateCelery) -> None:  # noqa: F811
    from django_celery_results.models import TaskResult

    _, done = _failed_and_completed(ergate)
    waiting = ergate.submit_job(
        "flaky", initial_input_value="D-1", requested_start_time=datetime.now(UTC) + timedelta(1)
    )
    client: object = _admin()
    post = client.post  # type: ignore[attr-defined]
    rows = [_row_id(done), _row_id(str(waiting.id))]
    answer = post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": rows, "post": "yes"},
        follow=True,
    ).content.decode()
    assert "Nothing deleted: 1 of the selected jobs have not finished" in answer
    assert TaskResult.objects.filter(task_id__in=[done, waiting.id]).count() == 2
    single = client.get(f"{CHANGELIST}{_row_id(str(waiting.id))}/delete/")  # type: ignore[attr-defined]
    assert single.status_code == 403
    post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": [_row_id(done)], "post": "yes"},
    )
    assert not TaskResult.objects.filter(task_id=done).exists()


def test_admin_refuses_who_is_not_staff(ergate: ErgateCelery) -> None:  # noqa: F811
    client = _client("customer", staff=False)
    response = client.get(CHANGELIST)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("ergate", ["redis"], indirect=True)
def test_admin_on_another_backend_lists_no_job_rows(ergate: ErgateCelery) -> None:  # noqa: F811
    _failed_and_completed(ergate)
    client: object = _admin()
    page = client.get(CHANGELIST).content.decode()  # type: ignore[attr-defined]
    assert _listed(page) == []
    assert len(ergate.list_jobs().jobs) == 2  # the console lists them
