"""The pages, the JSON endpoint and the admin, without a worker (jobs stay where they are)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any
from unittest import mock

from django.contrib.messages import get_messages
from django.test import Client, TestCase
from django.utils import timezone
from django_celery_results.models import TaskResult
from ergate_celery import ErgateCelery, JobStatus, get_job

from ..models import OrderJob
from .helpers import ORDER, make_user, place_order


class ViewTestCase(TestCase):
    def place(self, client: Client | None = None, **fields: Any) -> tuple[Any, str | None]:
        """Place an order, then run what the commit of its transaction runs (a TestCase
        never commits): the job becomes QUEUED or SCHEDULED."""
        with self.captureOnCommitCallbacks(execute=True):
            return place_order(client or self.client, **fields)


class LoginRequiredTests(ViewTestCase):
    def test_every_page_sends_anonymous_visitors_to_the_login_page(self) -> None:
        owner = make_user("owner")
        self.client.force_login(owner)
        _, job_id = self.place(start_at=timezone.now() + timedelta(hours=1))
        self.client.logout()
        for method, url in [
            ("get", "/"),
            ("get", "/orders/new/"),
            ("post", "/orders/new/"),
            ("get", f"/jobs/{job_id}/"),
            ("get", f"/jobs/{job_id}.json"),
            ("post", f"/jobs/{job_id}/cancel/"),
        ]:
            with self.subTest(method=method, url=url):
                response = getattr(self.client, method)(url, ORDER if method == "post" else None)
                self.assertRedirects(response, f"/accounts/login/?next={url}")
        self.assertEqual(OrderJob.objects.count(), 1)
        self.assertEqual(get_job(str(job_id)).status, JobStatus.SCHEDULED)  # not cancelled

    def test_login_page_logs_in(self) -> None:
        make_user("ada")
        self.assertContains(self.client.get("/accounts/login/"), 'name="username"')
        response = self.client.post(
            "/accounts/login/", {"username": "ada", "password": "secret-pass-123"}
        )
        self.assertRedirects(response, "/")


class OrderFormTests(ViewTestCase):
    def setUp(self) -> None:
        self.user = make_user("ada")
        self.client.force_login(self.user)

    def test_the_form_offers_products_and_cards(self) -> None:
        response = self.client.get("/orders/new/")
        self.assertContains(response, "Ergate mug")
        self.assertContains(response, 'value="declined"')
        self.assertContains(response, 'type="datetime-local"')

    def test_placing_an_order_submits_a_job_for_the_user(self) -> None:
        response, job_id = self.place(quantity=3)
        assert job_id is not None
        self.assertRedirects(response, f"/jobs/{job_id}/")
        self.assertEqual(OrderJob.objects.get(job_id=job_id).user, self.user)
        job = get_job(job_id)
        self.assertEqual(job.workflow_name, "process_order")
        self.assertEqual(job.status, JobStatus.QUEUED)
        self.assertEqual(
            job.initial_input_value, {"sku": "MUG", "quantity": 3, "card": "4242424242424242"}
        )
        self.assertEqual(
            job.user_context,
            {"user_id": self.user.pk, "username": "ada", "email": "ada@example.com"},
        )
        messages = [str(m) for m in get_messages(response.wsgi_request)]
        self.assertEqual(messages, ["Order placed."])

    def test_the_first_step_is_published_when_the_transaction_commits(self) -> None:
        with mock.patch.object(ErgateCelery, "publish", autospec=True) as publish:
            with self.captureOnCommitCallbacks(execute=False) as callbacks:
                _, job_id = place_order(self.client)
            assert job_id is not None
            self.assertEqual(get_job(job_id).status, JobStatus.PENDING)
            publish.assert_not_called()  # the view's transaction has not committed yet
            for callback in callbacks:  # what the commit runs
                callback()
            publish.assert_called_once()
        self.assertEqual(publish.call_args.args[1].id, job_id)
        self.assertEqual(get_job(job_id).status, JobStatus.QUEUED)

    def test_an_order_for_later_is_scheduled(self) -> None:
        start_at = timezone.now() + timedelta(hours=2)
        response, job_id = self.place(start_at=start_at)
        assert job_id is not None
        job = get_job(job_id)
        self.assertEqual(job.status, JobStatus.SCHEDULED)
        assert job.requested_start_time is not None
        self.assertEqual(job.requested_start_time, start_at.replace(microsecond=0))
        self.assertEqual(
            [str(m) for m in get_messages(response.wsgi_request)], ["Order scheduled."]
        )

    def test_bad_input_shows_form_errors_and_submits_nothing(self) -> None:
        past = timezone.localtime() - timedelta(hours=1)
        cases = {
            "quantity": ["0", "100", "two", ""],
            "sku": ["NOPE", ""],
            "card": ["1234"],
            "start_at": ["tomorrow", past.strftime("%Y-%m-%dT%H:%M:%S")],
        }
        for name, values in cases.items():
            for value in values:
                with self.subTest(field=name, value=value):
                    response = self.client.post("/orders/new/", {**ORDER, name: value})
                    self.assertEqual(response.status_code, 200)
                    self.assertTemplateUsed(response, "orders/order_form.html")
                    self.assertTrue(response.context["form"].errors[name])
                    self.assertContains(response, 'class="errorlist')
        self.assertFalse(OrderJob.objects.exists())
        self.assertFalse(TaskResult.objects.exists())  # no job record either


class JobPagesTests(ViewTestCase):
    def setUp(self) -> None:
        self.ada, self.bob = make_user("ada"), make_user("bob")
        self.client.force_login(self.ada)
        self.later = timezone.now() + timedelta(hours=1)
        _, ada_job = self.place(start_at=self.later, quantity=2)
        bob = Client()
        bob.force_login(self.bob)
        _, bob_job = self.place(bob, start_at=self.later, sku="TEE")
        assert ada_job is not None
        assert bob_job is not None
        self.ada_job, self.bob_job = ada_job, bob_job

    def test_the_list_shows_the_users_own_orders_only(self) -> None:
        _, second = self.place(quantity=5)
        response = self.client.get("/")
        self.assertContains(response, f'data-job-id="{self.ada_job}"')
        self.assertContains(response, f'data-job-id="{second}"')
        self.assertNotContains(response, self.bob_job)
        self.assertContains(response, "2 × Ergate mug")
        self.assertContains(response, 'data-job-url="/jobs/')  # the rows refresh themselves
        self.assertContains(response, "orders/jobs.js")
        self.assertEqual([job["id"] for job in response.context["jobs"]], [second, self.ada_job])

    def test_the_job_page_shows_status_and_progress(self) -> None:
        response = self.client.get(f"/jobs/{self.ada_job}/")
        self.assertContains(response, "SCHEDULED")
        self.assertContains(response, '<progress max="100" value="0.0">')
        self.assertContains(response, f"/jobs/{self.ada_job}/cancel/")  # still cancellable

    def test_the_job_page_shows_the_input_as_json(self) -> None:
        response = self.client.get(f"/jobs/{self.ada_job}/")
        self.assertContains(response, "&quot;sku&quot;: &quot;MUG&quot;")  # not {'sku': ...}
        self.assertNotContains(response, "&#x27;sku&#x27;")

    def test_a_job_beat_did_not_release_is_marked_overdue(self) -> None:
        self.assertNotContains(self.client.get(f"/jobs/{self.ada_job}/"), "overdue by")
        late = self.later + timedelta(seconds=75)
        with mock.patch("ergate_celery.scheduling.overdue.datetime") as clock:
            clock.now.return_value = late
            page = self.client.get(f"/jobs/{self.ada_job}/")
            data = self.client.get(f"/jobs/{self.ada_job}.json").json()
        self.assertContains(page, "is celery beat running?")
        self.assertRegex(data["overdue"], r"^overdue by 7\d s — is celery beat running\?$")

    def test_the_json_endpoint(self) -> None:
        data = self.client.get(f"/jobs/{self.ada_job}.json").json()
        self.assertEqual(data["id"], self.ada_job)
        self.assertEqual(data["status"], "SCHEDULED")
        self.assertIs(data["final"], False)
        self.assertEqual(data["percent"], 0.0)
        self.assertEqual(data["step"], "validate")
        self.assertEqual(data["order"], "2 × Ergate mug")
        self.assertEqual(data["url"], f"/jobs/{self.ada_job}/")
        self.assertEqual(
            data["requested_start_time"], self.later.replace(microsecond=0).isoformat()
        )

    def test_another_users_job_is_not_found_anywhere(self) -> None:
        missing = str(uuid.uuid4())
        for job_id in (self.bob_job, missing):
            with self.subTest(job_id=job_id):
                self.assertEqual(self.client.get(f"/jobs/{job_id}/").status_code, 404)
                self.assertEqual(self.client.get(f"/jobs/{job_id}.json").status_code, 404)
                self.assertEqual(self.client.post(f"/jobs/{job_id}/cancel/").status_code, 404)
        self.assertEqual(self.client.get("/jobs/not-a-job-id/").status_code, 404)
        self.assertEqual(get_job(self.bob_job).status, JobStatus.SCHEDULED)

    def test_cancel(self) -> None:
        page = self.client.post(f"/jobs/{self.ada_job}/cancel/", follow=True)
        self.assertRedirects(page, f"/jobs/{self.ada_job}/")
        self.assertEqual(get_job(self.ada_job).status, JobStatus.CANCELLED)
        self.assertContains(page, "Job cancelled.")
        self.assertContains(page, "CANCELLED")
        self.assertNotContains(page, "/cancel/")  # nothing left to cancel
        again = self.client.post(f"/jobs/{self.ada_job}/cancel/", follow=True)
        self.assertContains(again, "The job had already ended: CANCELLED.")

    def test_cancel_takes_a_post_with_a_csrf_token(self) -> None:
        self.assertEqual(self.client.get(f"/jobs/{self.ada_job}/cancel/").status_code, 405)
        strict = Client(enforce_csrf_checks=True)
        strict.force_login(self.ada)
        self.assertEqual(strict.post(f"/jobs/{self.ada_job}/cancel/").status_code, 403)
        self.assertEqual(get_job(self.ada_job).status, JobStatus.SCHEDULED)

    def test_an_expired_job_record_reads_expired(self) -> None:
        TaskResult.objects.filter(task_id=self.ada_job).delete()
        self.assertEqual(self.client.get(f"/jobs/{self.ada_job}.json").json()["status"], "EXPIRED")
        self.assertContains(self.client.get("/"), "EXPIRED")
        self.assertContains(self.client.get(f"/jobs/{self.ada_job}/"), "has expired")


class AdminTests(ViewTestCase):
    def test_the_admin_lists_jobs_and_order_links(self) -> None:
        admin = make_user("admin", is_staff=True, is_superuser=True)
        self.client.force_login(admin)
        _, job_id = self.place(start_at=timezone.now() + timedelta(hours=1))
        assert job_id is not None
        for url in (
            "/admin/orders/orderjob/",
            "/admin/django_celery_results/taskresult/",
            "/admin/ergate_celery/ergatejob/",
        ):
            with self.subTest(url=url):
                self.assertContains(self.client.get(url), job_id)
        self.assertContains(self.client.get("/admin/orders/orderjob/"), "SCHEDULED")
