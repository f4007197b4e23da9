"""The staff console (`ergate_celery.contrib.django.urls`) on every job store — django-db,
Redis and SQLAlchemy — with a real worker: list, filter, page, retry, cancel, pause, graph."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from ergate_celery import ErgateCelery, JobStatus, Workflow

from .django_support import configure_django
from .services import RedisService

pytest.importorskip("django")
pytest.importorskip("django_celery_results")

WAIT = 60
#: While this holds a reason, the `check` step of "flaky" raises it.
OUTAGE: list[str] = []


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Django configured for this process (once), with a migrated database."""
    folder = tmp_path_factory.mktemp("django")
    configure_django(folder)
    return folder


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


def _client(username: str = "staff", *, staff: bool = True) -> Any:
    from django.contrib.auth.models import User
    from django.test import Client

    user = User.objects.create_user(username, f"{username}@example.com", "pw", is_staff=staff)
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
        ({"since": "yesterday"}, "is neither a duration"),
        ({"tag": "order"}, "is not KEY=VALUE"),
    ):
        response = client.get("/ergate/", query)
        assert response.status_code == 400, query
        assert message in response.content.decode(), query
    assert ergate.list_jobs().jobs == []


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
