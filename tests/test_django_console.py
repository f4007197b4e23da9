"""The staff console (`ergate_celery.contrib.django.urls`) on every job store — django-db,
Redis and SQLAlchemy — with a real worker: list, filter, page, retry, cancel, pause, graph; and
the Django admin's job records on django-db: filters, search by id and tags, the retry and
cancel actions, no bulk delete of unfinished jobs, and a job page that reads as a job."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from ergate_celery import ErgateCelery, Job, JobStatus, Wait, Workflow

from .services import RedisService

pytest.importorskip("django")
pytest.importorskip("django_celery_results")

WAIT = 60
#: While this holds a reason, the `check` step of "flaky" raises it.
OUTAGE: list[str] = []


def flaky_workflow() -> Workflow:
    workflow = Workflow(unique_name="flaky")

    @workflow.step
    def check(order: str) -> str:
        if OUTAGE:
            raise RuntimeError(OUTAGE[0])
        return order

    @workflow.step
    def finish(order: str) -> str:
        return f"{order} done"

    return workflow


@pytest.fixture(params=["django_db", "redis", "sqlalchemy"])
def ergate(
    request: pytest.FixtureRequest, django_db: Path, redis_service: RedisService, tmp_path: Path
) -> Iterator[ErgateCelery]:
    """A current app with the "flaky" workflow, its jobs stored on each kind of store."""
    backends = {
        "django_db": "django-db",
        "redis": redis_service.url,
        "sqlalchemy": f"db+sqlite:///{tmp_path / 'results.sqlite'}",
    }
    redis_service.flush()
    OUTAGE.clear()
    app = Celery(f"console_{request.param}", set_as_current=True)
    app.conf.update(
        broker_url=redis_service.url,
        result_backend=backends[request.param],
        task_default_queue="ergate-console-test",
        worker_hijack_root_logger=False,
        broker_transport_options={"polling_interval": 0.2},
        ergate_pause_refresh=0.1,
    )
    bound = ErgateCelery(app)
    bound.register_workflow(flaky_workflow())
    yield bound
    bound.close()
    _empty_django_tables()
    redis_service.flush()
    app.close()


def _empty_django_tables() -> None:
    from django.contrib.auth.models import User
    from django_celery_results.models import TaskResult

    from ergate_celery.contrib.django.models import (
        JobIndexEntry,
        JobListing,
        JobTag,
        PausedWorkflow,
    )

    for model in (TaskResult, JobIndexEntry, JobListing, JobTag, PausedWorkflow, User):
        model.objects.all().delete()


#: What a console user needs: to see, and to act (the admin's permissions on jobs).
SEE, ACT = ["view_ergatejob"], ["view_ergatejob", "change_ergatejob"]


def _client(username: str = "staff", *, staff: bool = True, perms: list[str] = ACT) -> Any:
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    user = User.objects.create_user(username, f"{username}@example.com", "pw", is_staff=staff)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="ergate_celery", codename__in=perms)
    )
    client = Client()
    client.force_login(user)
    return client


def _worker(ergate: ErgateCelery) -> Any:
    return start_worker(ergate.app, pool="threads", perform_ping_check=False, loglevel="WARNING")


def _failed_and_completed(ergate: ErgateCelery) -> tuple[str, str]:
    """One job FAILED in `check` (a warehouse outage), one COMPLETED; their ids."""
    OUTAGE.append("warehouse offline")
    with _worker(ergate):
        failed = ergate.submit_job("flaky", initial_input_value="A-1", tags={"order": "A-1"})
        assert ergate.wait_for_job(failed.id, timeout=WAIT).status is JobStatus.FAILED
        OUTAGE.clear()
        done = ergate.submit_job("flaky", initial_input_value="A-2", tags={"order": "A-2"})
        assert ergate.wait_for_job(done.id, timeout=WAIT).status is JobStatus.COMPLETED
    return str(failed.id), str(done.id)


def _listed(page: str) -> list[str]:
    return re.findall(r'<tr data-job-id="([^"]+)"', page)


def test_the_console_refuses_anyone_but_staff(ergate: ErgateCelery) -> None:
    from django.test import Client

    for client in (Client(), _client("customer", staff=False)):
        for url in (
            "/ergate/",
            "/ergate/workflows/",
            "/ergate/workflows/flaky/",
            "/ergate/jobs/x/",
        ):
            response = client.get(url)
            assert response.status_code == 302, url
            assert response["Location"].startswith("/admin/login/"), url
        assert client.post("/ergate/workflows/flaky/", {"action": "pause"}).status_code == 302
    assert ergate.paused_workflows() == set()


@pytest.mark.parametrize("ergate", ["django_db"], indirect=True)
def test_the_console_needs_the_admins_permissions_on_jobs(ergate: ErgateCelery) -> None:
    waiting = _tomorrow(ergate, "P-1")
    pages = [
        "/ergate/",
        "/ergate/workflows/",
        "/ergate/workflows/flaky/",
        f"/ergate/jobs/{waiting.id}/",
    ]
    actions = [
        (f"/ergate/jobs/{waiting.id}/", "cancel"),
        (f"/ergate/jobs/{waiting.id}/", "retry"),
        ("/ergate/workflows/flaky/", "pause"),
        ("/ergate/workflows/flaky/", "resume"),
    ]
    nobody = _client("nobody", perms=[])
    for url in pages:
        assert nobody.get(url).status_code == 403, url
    for url, action in actions:
        assert nobody.post(url, {"action": action}).status_code == 403, (url, action)
    viewer = _client("viewer", perms=SEE)
    for url in pages:
        assert viewer.get(url).status_code == 200, url
    job_page = viewer.get(f"/ergate/jobs/{waiting.id}/").content.decode()
    assert 'value="cancel"' not in job_page  # no button for what it may not do
    assert 'value="pause"' not in viewer.get("/ergate/workflows/flaky/").content.decode()
    for url, action in actions:
        assert viewer.post(url, {"action": action}).status_code == 403, (url, action)
    assert ergate.get_job(str(waiting.id)).status is JobStatus.SCHEDULED
    assert ergate.paused_workflows() == set()
    operator = _client("operator", perms=ACT)
    assert 'value="cancel"' in operator.get(f"/ergate/jobs/{waiting.id}/").content.decode()
    operator.post(f"/ergate/jobs/{waiting.id}/", {"action": "cancel"})
    assert ergate.get_job(str(waiting.id)).status is JobStatus.CANCELLED


@pytest.mark.parametrize("ergate", ["redis"], indirect=True)
def test_the_console_says_which_waits_are_overdue(ergate: ErgateCelery) -> None:
    ended = datetime.now(UTC) - timedelta(seconds=30)
    for job_id, signal in (("slept", None), ("timed-out", "ok")):
        ergate.store.create(
            Job(
                id=job_id,
                workflow_name="flaky",
                status=JobStatus.SCHEDULED,
                current_step=1,
                current_step_name="finish",
                steps_completed=1,
                submitted_at=ended - timedelta(minutes=1),
                wait=Wait(
                    step="check", since=ended - timedelta(minutes=1), until=ended, signal=signal
                ),
            )
        )
    client = _client()
    listing = client.get("/ergate/").content.decode()
    assert "(its sleep ended) — is celery beat running?" in listing
    assert "(its signal wait timed out) — is celery beat running?" in listing
    page = client.get("/ergate/jobs/slept/").content.decode()
    assert re.search(r'data-field="overdue">overdue by \d+ s \(its sleep ended\)', page)


def test_the_console_lists_filters_and_pages_jobs(
    ergate: ErgateCelery, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed, done = _failed_and_completed(ergate)
    client = _client()
    everything = client.get("/ergate/").content.decode()
    assert _listed(everything) == [done, failed]  # newest first
    assert "RuntimeError: warehouse offline" in everything
    only_failed = client.get("/ergate/", {"status": "FAILED", "workflow": "flaky"})
    assert _listed(only_failed.content.decode()) == [failed]
    assert _listed(client.get("/ergate/", {"tag": "order=A-2"}).content.decode()) == [done]
    assert _listed(client.get("/ergate/", {"since": "1h"}).content.decode()) == [done, failed]
    future = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert _listed(client.get("/ergate/", {"since": future}).content.decode()) == []

    from ergate_celery.contrib.django import views

    monkeypatch.setattr(views, "PAGE_SIZE", 1)
    first = client.get("/ergate/").content.decode()
    assert _listed(first) == [done]
    next_url = re.search(r'id="next-page" href="([^"]+)"', first)
    assert next_url is not None
    second = client.get("/ergate/" + next_url.group(1).replace("&amp;", "&")).content.decode()
    assert _listed(second) == [failed]


def test_the_job_page_shows_the_error_and_a_retry_completes_the_job(
    ergate: ErgateCelery,
) -> None:
    failed, _ = _failed_and_completed(ergate)
    client = _client()
    page = client.get(f"/ergate/jobs/{failed}/").content.decode()
    assert 'data-field="status">FAILED<' in page
    assert "RuntimeError</strong>: warehouse offline" in page
    assert "Traceback (most recent call last)" in page
    assert page.count('<div class="bar failed"') == 1
    assert 'value="retry"' in page
    assert 'value="cancel"' not in page
    with _worker(ergate):
        response = client.post(f"/ergate/jobs/{failed}/", {"action": "retry"})
        assert response.status_code == 302
        job = ergate.wait_for_job(failed, timeout=WAIT)
    assert job.status is JobStatus.COMPLETED
    assert job.retries == 1
    page = client.get(f"/ergate/jobs/{failed}/").content.decode()
    assert "Job retried: QUEUED at #0 check." in page
    assert 'data-field="status">COMPLETED<' in page
    assert '<div class="retry">retry 1</div>' in page  # the runs after the retry, marked
    assert page.count('<div class="bar ') == 3  # check (failed), check, finish
    assert "Errors of earlier runs" in page


def test_cancel_from_the_job_page(ergate: ErgateCelery) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    job = ergate.submit_job("flaky", initial_input_value="B-1", requested_start_time=later)
    client = _client()
    page = client.get(f"/ergate/jobs/{job.id}/").content.decode()
    assert 'data-field="status">SCHEDULED<' in page
    assert '<meta http-equiv="refresh"' in page  # an unfinished job's page follows it
    client.post(f"/ergate/jobs/{job.id}/", {"action": "cancel"})
    assert ergate.get_job(str(job.id)).status is JobStatus.CANCELLED
    again = client.post(f"/ergate/jobs/{job.id}/", {"action": "retry"}, follow=True)
    assert "Job retried: SCHEDULED" in again.content.decode()  # its start time is ahead
    refused = client.post(f"/ergate/jobs/{job.id}/", {"action": "retry"}, follow=True)
    assert "only FAILED, ABORTED or CANCELLED jobs can be retried" in refused.content.decode()
    odd = client.post(f"/ergate/jobs/{job.id}/", {"action": "delete"}, follow=True)
    assert "Unknown action &#x27;delete&#x27;" in odd.content.decode()
    assert ergate.get_job(str(job.id)).status is JobStatus.SCHEDULED


def test_bad_input_is_a_clear_error_and_changes_nothing(ergate: ErgateCelery) -> None:
    client = _client()
    assert client.get("/ergate/jobs/no-such-job/").status_code == 404
    assert client.post("/ergate/jobs/no-such-job/", {"action": "retry"}).status_code == 404
    assert client.get("/ergate/workflows/no_such_workflow/").status_code == 404
    for query, message in (
        ({"cursor": "not-a-cursor"}, "is not a cursor of list_jobs"),
        ({"workflow": "no_such_workflow"}, "no_such_workflow"),
        ({"status": "LOST"}, "status &#x27;LOST&#x27; is not one of"),
        ({"since": "yesterday"}, "is not a duration (30s, 15m, 1h, 2d, 1w) or an ISO 8601"),
        ({"since": "99999999999d"}, "is out of range: write a shorter duration"),
        ({"since": "0001-01-01T00:00+05:00"}, "or a date between 0001-01-02 and 9999-12-30"),
        ({"cursor": _forged_cursor("[" * 50_000)}, "is not a cursor of list_jobs"),
        ({"cursor": _forged_cursor('["0001-01-01T00:00:00+05:00", "x"]')}, "not a cursor"),
        ({"tag": "order"}, "is not KEY=VALUE"),
    ):
        response = client.get("/ergate/", query)
        assert response.status_code == 400, query
        assert message in response.content.decode(), query
    assert ergate.list_jobs().jobs == []


def _forged_cursor(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_pause_resume_and_the_graph_of_a_workflow(ergate: ErgateCelery) -> None:
    client = _client()
    listing = client.get("/ergate/workflows/").content.decode()
    assert '<tr data-workflow="flaky">' in listing
    client.post("/ergate/workflows/flaky/", {"action": "pause"})
    assert ergate.paused_workflows() == {"flaky"}
    page = client.get("/ergate/workflows/flaky/").content.decode()
    assert "paused</span>: no step of it starts" in page
    assert 'value="resume"' in page
    assert "<li>check</li><li>finish</li>" in page
    assert "s0 --&gt; s1" in page  # the Mermaid source, escaped in a <pre>
    assert re.search(r"<td>finish</td><td>END</td>\s*<td>next step</td>", page)
    client.post("/ergate/workflows/flaky/", {"action": "resume"})
    assert ergate.paused_workflows() == set()


# The Django admin's job records -------------------------------------------------------------------

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


def _tomorrow(ergate: ErgateCelery, order: str) -> Job:
    """A "flaky" job for `order`, scheduled for tomorrow."""
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    return ergate.submit_job("flaky", initial_input_value=order, requested_start_time=tomorrow)


def _row_id(job_id: str) -> int:
    from django_celery_results.models import TaskResult

    return int(TaskResult.objects.get(task_id=job_id).pk)


def _admin_listed(page: str) -> list[str]:
    return re.findall(r'<th class="field-task_id"><a href="[^"]+">([^<]+)</a>', page)


@on_django_db
def test_admin_filters_and_searches_jobs(ergate: ErgateCelery) -> None:
    failed, done = _failed_and_completed(ergate)
    client: object = _admin()
    get = client.get  # type: ignore[attr-defined]
    page = get(CHANGELIST).content.decode()
    assert _admin_listed(page) == [done, failed]
    assert '<td class="field-status_name">FAILED</td>' in page  # names, not numbers
    assert '<td class="field-step">#0 check</td>' in page
    assert _admin_listed(get(CHANGELIST, {"status": "FAILED"}).content.decode()) == [failed]
    assert _admin_listed(get(CHANGELIST, {"workflow": "flaky"}).content.decode()) == [done, failed]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d 00:00:00+00:00")
    assert _admin_listed(get(CHANGELIST, {"date_created__gte": tomorrow}).content.decode()) == []
    assert _admin_listed(get(CHANGELIST, {"q": failed[:8]}).content.decode()) == [failed]
    assert _admin_listed(get(CHANGELIST, {"q": "order=A-2"}).content.decode()) == [done]
    assert _admin_listed(get(CHANGELIST, {"q": "A-1"}).content.decode()) == [failed]
    assert _admin_listed(get(CHANGELIST, {"q": "order=nope"}).content.decode()) == []


@on_django_db
def test_admin_job_page_reads_as_a_job(ergate: ErgateCelery) -> None:
    failed, _ = _failed_and_completed(ergate)
    client: object = _admin()
    listing = client.get(CHANGELIST).content.decode()  # type: ignore[attr-defined]
    assert f'<a href="{CHANGELIST}{failed}/change/">{failed}</a>' in listing  # by job id
    assert '<td class="field-error">RuntimeError: warehouse offline</td>' in listing
    dates = re.findall(r'<td class="field-(?:submitted|finished)">([^<]+)</td>', listing)
    assert dates
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", d) for d in dates), dates
    page = client.get(f"{CHANGELIST}{failed}/change/").content.decode()  # type: ignore[attr-defined]
    assert f'action="{CHANGELIST}{failed}/act/"' in page
    assert 'value="retry"' in page
    assert 'value="cancel"' not in page
    assert f"<h2>flaky job {failed} (FAILED)</h2>" in page  # not "<Task: …>"
    assert 'data-field="status">FAILED<' in page
    assert '<progress max="100" value="0.0">' in page
    assert 'data-field="step">#0 check' in page
    assert "RuntimeError</strong>: warehouse offline" in page
    assert "Traceback (most recent call last)" in page
    assert '<div class="bar failed"' in page
    assert re.search(r'title="FAILED at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d"', page)  # one format
    assert '"workflow_name": "flaky"' not in page  # not the stored JSON


@on_django_db
def test_admin_actions_retry_and_cancel(ergate: ErgateCelery) -> None:
    failed, done = _failed_and_completed(ergate)
    later = _tomorrow(ergate, "C-1")
    post = _admin().post  # type: ignore[attr-defined]
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
def test_admin_deletes_no_unfinished_job(ergate: ErgateCelery) -> None:
    from django_celery_results.models import TaskResult

    _, done = _failed_and_completed(ergate)
    waiting = _tomorrow(ergate, "D-1")
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


@on_django_db
def test_admin_job_page_buttons_retry_and_cancel_with_the_change_permission(
    ergate: ErgateCelery,
) -> None:
    later = _tomorrow(ergate, "E-1")
    page_url = f"{CHANGELIST}{later.id}/change/"
    act_url = f"{CHANGELIST}{later.id}/act/"
    viewer = _client("admin-viewer", perms=SEE)
    assert viewer.get(page_url).status_code == 200
    assert 'value="cancel"' not in viewer.get(page_url).content.decode()
    assert viewer.post(act_url, {"action": "cancel"}).status_code == 403
    assert _client("admin-nobody", perms=[]).get(page_url).status_code == 403
    assert ergate.get_job(str(later.id)).status is JobStatus.SCHEDULED
    operator = _client("admin-operator", perms=ACT)
    assert 'value="cancel"' in operator.get(page_url).content.decode()
    answer = operator.post(act_url, {"action": "cancel"}, follow=True).content.decode()
    assert "Cancel asked: the job is CANCELLED." in answer
    answer = operator.post(act_url, {"action": "retry"}, follow=True).content.decode()
    assert "Job retried: SCHEDULED" in answer
    assert ergate.get_job(str(later.id)).status is JobStatus.SCHEDULED


def test_admin_refuses_who_is_not_staff(ergate: ErgateCelery) -> None:
    client = _client("customer", staff=False)
    response = client.get(CHANGELIST)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("ergate", ["redis"], indirect=True)
def test_admin_on_another_backend_lists_no_job_rows(ergate: ErgateCelery) -> None:
    _failed_and_completed(ergate)
    client: object = _admin()
    page = client.get(CHANGELIST).content.decode()  # type: ignore[attr-defined]
    assert _admin_listed(page) == []
    assert len(ergate.list_jobs().jobs) == 2  # the console lists them


def test_a_parents_page_lists_its_children_and_a_childs_page_links_its_parent(
    ergate: ErgateCelery,
) -> None:
    from .apps import fan_out_app

    for workflow in (fan_out_app.parent, fan_out_app.square):
        ergate.register_workflow(workflow)
    with _worker(ergate):
        job = ergate.submit_job("fo_parent", initial_input_value={"child": "fo_square", "count": 7})
        assert ergate.wait_for_job(job.id, timeout=WAIT).status is JobStatus.COMPLETED
    client = _client()
    page = client.get(f"/ergate/jobs/{job.id}/").content.decode()
    assert 'id="children"' in page
    rows = re.findall(
        r'<a href="/ergate/jobs/([^/"]+)/">\1</a></td>\s*<td>fo_square</td>\s*'
        r"<td>(\w+)</td>",
        page,
    )
    assert rows == [(f"{job.id}.{n}", "FAILED" if n == 5 else "COMPLETED") for n in range(7)]
    child = client.get(f"/ergate/jobs/{job.id}.3/").content.decode()
    assert f'Child of job <a href="/ergate/jobs/{job.id}/">{job.id}</a>' in child
