"""Orders placed through the view and carried out by a real Celery worker (in-process, threads)
on the project's broker and result backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery.contrib.testing.worker import start_worker
from django.core import mail
from django.db import transaction
from django.test import TransactionTestCase, override_settings
from django.utils import timezone
from ergate_celery import ErgateCelery, Job, JobNotFoundError, JobStatus, get_job, submit_job
from ergate_celery.scheduling.beat import release_due_jobs

from shop.celery import app

from .helpers import make_user, place_order

WAIT = 60.0


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out waiting for {what or predicate}")
        time.sleep(0.02)
    return value


@override_settings(ORDERS_PICK_SECONDS=0.6)
class JobRunTests(TransactionTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        app.control.purge()  # nothing left over from earlier runs
        cls.enterClassContext(
            start_worker(
                app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING"
            )
        )

    def setUp(self) -> None:
        self.user = make_user("ada")
        self.client.force_login(self.user)

    def run_order(self, **fields: Any) -> Job:
        response, job_id = place_order(self.client, **fields)
        self.assertEqual(response.status_code, 302, "the order form refused the order")
        assert job_id is not None
        return ErgateCelery.of().wait_for_job(job_id, timeout=WAIT)

    def steps(self, job: Job) -> list[tuple[str, int]]:
        return [(timing.step, timing.attempt) for timing in job.timings]

    def test_an_order_is_charged_after_a_retry_shipped_and_confirmed(self) -> None:
        job = self.run_order(sku="TEE", quantity=3)
        self.assertEqual(job.status, JobStatus.COMPLETED)
        self.assertEqual(job.percent_completed, 100.0)
        result = job.last_return_value
        self.assertEqual(result["outcome"], "shipped")
        self.assertEqual(result["total_cents"], 7500)
        self.assertEqual(result["charge_attempts"], 2)  # the gateway timed out once
        self.assertEqual(
            self.steps(job),
            [
                ("validate", 1),
                ("reserve_stock", 1),
                ("charge", 2),
                ("pack", 1),
                ("ship", 1),
                ("notify", 1),
            ],
        )
        self.assertEqual(job.steps_completed, 6)  # a retry is the same step again
        # `pack` fanned out one child job per order line; `ship` got their parcels.
        self.assertEqual(result["parcels"], ["PCL-0-3xTEE"])
        [line] = ErgateCelery.of().list_jobs(parent=str(job.id)).jobs
        self.assertEqual(line.workflow_name, "pack_order_line")
        self.assertEqual(line.status, JobStatus.COMPLETED)
        [confirmation] = mail.outbox
        self.assertEqual(confirmation.to, ["ada@example.com"])
        self.assertIn("3 × Ant colony T-shirt shipped", confirmation.body)
        data = self.client.get(f"/jobs/{job.id}.json").json()
        self.assertEqual((data["status"], data["final"], data["percent"]), ("COMPLETED", True, 100))
        self.assertEqual(data["outcome"], "shipped")

    def test_a_declined_card_is_refunded(self) -> None:
        job = self.run_order(sku="HIVE", card="declined")
        self.assertEqual(job.status, JobStatus.COMPLETED)
        self.assertEqual(job.last_return_value["outcome"], "refunded")
        self.assertEqual(
            [step for step, _ in self.steps(job)],
            ["validate", "reserve_stock", "charge", "refund", "notify"],
        )
        self.assertIn("declined", mail.outbox[0].body)

    def test_more_than_the_stock_fails_the_job(self) -> None:
        with self.assertLogs("ergate_celery", "ERROR") as logs:  # the worker logs the failure
            job = self.run_order(quantity=50)
            # The failure is announced (and logged) right after it is stored: wait for the line.
            deadline = time.monotonic() + WAIT
            while not logs.output and time.monotonic() < deadline:
                time.sleep(0.02)
        self.assertIn("OutOfStockError", "\n".join(logs.output))
        self.assertEqual(job.status, JobStatus.FAILED)
        assert job.error is not None
        self.assertEqual((job.error.type, job.error.step), ("OutOfStockError", "reserve_stock"))
        self.assertIn("Only 20 × MUG in stock", job.error.message)
        self.assertEqual(mail.outbox, [])
        data = self.client.get(f"/jobs/{job.id}.json").json()
        self.assertEqual(data["status"], "FAILED")
        self.assertTrue(data["error"].startswith("OutOfStockError: "))

    # Long enough that the view, polled from this thread, sees several of the step's reports.
    @override_settings(ORDERS_PICK_SECONDS=2.0)
    def test_progress_moves_within_the_picking_step(self) -> None:
        _, job_id = place_order(self.client)
        seen: list[tuple[str, str, float]] = []

        def final() -> bool:
            data = self.client.get(f"/jobs/{job_id}.json").json()
            seen.append((data["status"], data["step"], data["percent"]))
            return bool(data["final"])

        wait_until(final, what="the job to finish")
        percents = [percent for _, _, percent in seen]
        self.assertEqual(percents, sorted(percents))  # only forward
        picking = {percent for status, step, percent in seen if step == "reserve_stock"}
        self.assertGreaterEqual(len(picking), 3, seen)  # reported within the step
        self.assertEqual(seen[-1], ("COMPLETED", None, 100.0))

    def test_a_scheduled_order_starts_when_beat_releases_it(self) -> None:
        start_at = timezone.now() + timedelta(seconds=2)
        _, job_id = place_order(self.client, start_at=start_at)
        assert job_id is not None
        job = get_job(job_id)
        self.assertEqual(job.status, JobStatus.SCHEDULED)
        assert job.requested_start_time is not None
        # Before the job's time a release run leaves it (asked with that time, not the clock,
        # which may already have passed it on a slow machine).
        early = job.requested_start_time - timedelta(milliseconds=1)
        self.assertEqual(release_due_jobs(ErgateCelery.of(), now=early), 0)
        self.assertEqual(get_job(job_id).status, JobStatus.SCHEDULED)
        # The task beat sends every CELERY_ERGATE_SCHEDULE_INTERVAL, run here in-process.
        release = app.tasks["ergate.release_scheduled_jobs"]

        def released() -> bool:
            return bool(release.apply().get())

        wait_until(released, what="the release")
        done = ErgateCelery.of().wait_for_job(job_id, timeout=WAIT)
        self.assertEqual(done.status, JobStatus.COMPLETED)
        assert done.started_at is not None
        self.assertGreaterEqual(done.started_at, job.requested_start_time)

    @override_settings(ORDERS_PICK_SECONDS=3.0)
    def test_cancel_while_running_stops_after_the_running_step(self) -> None:
        _, job_id = place_order(self.client)
        assert job_id is not None
        wait_until(
            lambda: (
                self.client.get(f"/jobs/{job_id}.json").json()["step"] == "reserve_stock"
                and get_job(job_id).status is JobStatus.RUNNING
            ),
            what="the picking step to run",
        )
        page = self.client.post(f"/jobs/{job_id}/cancel/", follow=True)
        self.assertContains(page, "Cancelling: the job stops when its running step ends.")
        job = ErgateCelery.of().wait_for_job(job_id, timeout=WAIT)
        self.assertEqual(job.status, JobStatus.CANCELLED)
        self.assertEqual([step for step, _ in self.steps(job)], ["validate", "reserve_stock"])
        self.assertEqual(mail.outbox, [])

    def test_a_rolled_back_transaction_submits_nothing(self) -> None:
        order = {"sku": "MUG", "quantity": 1, "card": "4242424242424242"}
        with self.assertRaises(RuntimeError), transaction.atomic():
            job = submit_job("process_order", initial_input_value=order)
            raise RuntimeError("the order could not be saved")
        with self.assertRaises(JobNotFoundError):
            get_job(str(job.id))
        committed = submit_job("process_order", initial_input_value=order)
        done = ErgateCelery.of().wait_for_job(str(committed.id), timeout=WAIT)
        self.assertEqual(done.status, JobStatus.COMPLETED)
        self.assertIsNone(done.last_return_value["notified"])  # no customer, no e-mail
        with self.assertRaises(JobNotFoundError):  # and no step of it ran meanwhile
            get_job(str(job.id))
