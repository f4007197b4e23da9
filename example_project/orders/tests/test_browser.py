"""In headless Chromium: log in, place orders, watch the progress bars move until the jobs end;
staff approve a waiting order, and retry a failed one from the ergate console (/ergate/) and
from the admin's job records (/admin/ergate_celery/ergatejob/).

Run with `python manage.py test --tag browser`; needs Debian's `chromium` and
`chromium-driver` packages and `pip install selenium`. Screenshots go to
$ORDERS_SCREENSHOT_DIR (default: var/screenshots).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import SkipTest, mock

from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.contrib.staticfiles.testing import StaticLiveServerTestCase
from django.test import override_settings, tag

from shop.celery import app

from .helpers import make_user

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,800",
]
WAIT = 60.0


@tag("browser")
@override_settings(ORDERS_PICK_SECONDS=2.0)
class BrowserTests(StaticLiveServerTestCase):
    host = "127.0.0.1"
    driver: Any

    @classmethod
    def setUpClass(cls) -> None:
        missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
        if missing:
            raise SkipTest(f"{', '.join(missing)} missing: apt-get install chromium-driver")
        try:
            from selenium import webdriver
        except ImportError:
            raise SkipTest("selenium is not installed: pip install selenium") from None
        super().setUpClass()
        app.control.purge()
        cls.enterClassContext(
            start_worker(
                app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING"
            )
        )
        profile = cls.enterClassContext(tempfile.TemporaryDirectory(prefix="chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        cls.driver = webdriver.Chrome(
            options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
        )
        cls.addClassCleanup(cls.driver.quit)
        cls.screenshots = Path(
            os.environ.get("ORDERS_SCREENSHOT_DIR") or settings.VAR_DIR / "screenshots"
        )
        cls.screenshots.mkdir(parents=True, exist_ok=True)

    def screenshot(self, name: str) -> None:
        self.assertTrue(self.driver.save_screenshot(str(self.screenshots / name)))

    def js(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def open(self, path: str) -> None:
        self.driver.get(f"{self.live_server_url}{path}")

    def wait_for(self, script: str, what: str) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + WAIT
        while not (value := self.js(f"return {script}")):
            self.assertLess(time.monotonic(), deadline, f"timed out waiting for {what}")
            time.sleep(0.05)
        return value

    def wait_for_log(self, logs: Any) -> None:
        """A failure is logged right after it is stored: wait for the line to arrive."""
        deadline = time.monotonic() + WAIT
        while not logs.output:
            self.assertLess(time.monotonic(), deadline, "timed out waiting for the log line")
            time.sleep(0.02)

    def fill(self, **fields: str) -> None:
        """Fill the page's form as a user would and press its button."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import Select, WebDriverWait

        for name, value in fields.items():
            # A page still loading on a busy machine: wait for the field rather than fail.
            element = WebDriverWait(self.driver, WAIT).until(
                expected_conditions.presence_of_element_located((By.NAME, name))
            )
            if element.tag_name == "select":
                Select(element).select_by_value(value)
            else:
                element.clear()
                element.send_keys(value)
        self.driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()

    def place_order(self, **fields: str) -> str:
        self.open("/orders/new/")
        self.fill(**fields)
        job_id: str = self.wait_for("document.getElementById('job')?.dataset.jobId", "the job page")
        return job_id

    def place_failing_and_shipped_orders(self, mugs: str, tees: str) -> tuple[str, str]:
        """An order of more `mugs` than the warehouse holds, whose job fails at reserve_stock,
        then one of `tees` that ships; their job ids, each once its job has ended."""
        status = "document.querySelector('#job [data-field=status]')?.textContent"
        with self.assertLogs("ergate_celery", "ERROR") as logs:  # the worker logs the failed job
            failed = self.place_order(sku="MUG", quantity=mugs)
            self.wait_for(f"{status} === 'FAILED'", "the order to fail")
            self.wait_for_log(logs)
        shipped = self.place_order(sku="TEE", quantity=tees)
        self.wait_for(f"{status} === 'COMPLETED'", "the other order to complete")
        return failed, shipped

    def test_place_orders_and_watch_their_progress(self) -> None:
        make_user("ada")
        self.open("/")
        self.assertIn("/accounts/login/", self.driver.current_url)
        self.fill(username="ada", password="secret-pass-123")
        self.wait_for("document.querySelector('h1')?.textContent === 'My orders'", "the list")

        # One order, on its own page: the bar fills up without a reload, then the page shows
        # the result.
        self.place_order(sku="TEE", quantity="3")
        seen: list[tuple[str, float]] = []
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            state = self.js(
                "const job = document.getElementById('job');"
                "return job && [job.querySelector('[data-field=status]').textContent,"
                " job.querySelector('progress').value, job.dataset.final];"
            )
            if state:
                seen.append((state[0], float(state[1])))
                if state[2] == "true" and "Result" in self.js("return document.body.innerText"):
                    break
            time.sleep(0.1)
        self.assertEqual(seen[-1], ("COMPLETED", 100.0), seen)
        self.assertTrue(any(0.0 < percent < 100.0 for _, percent in seen), seen)
        self.assertIn("shipped", self.js("return document.body.innerText"))
        self.screenshot("order-detail.png")

        # Two more; the list refreshes its rows by itself (no reload) until all have ended.
        with self.assertLogs("ergate_celery", "ERROR") as logs:  # the worker logs the failed job
            self.place_order(sku="HIVE", card="declined")
            self.place_order(sku="MUG", quantity="50")
            self.open("/")
            self.js("window.notReloaded = true")
            rows = "Array.from(document.querySelectorAll('#jobs tbody tr'))"
            running = f"{rows}.some(row => row.dataset.final !== 'true')"
            if self.js(f"return {running}"):
                self.screenshot("order-list-running.png")
            self.wait_for(f"!({running})", "the list to show every job ending")
            self.wait_for_log(logs)
        self.assertTrue(self.js("return window.notReloaded === true"))
        table = self.js(
            f"return {rows}.map(row => [row.querySelector('[data-field=status]').textContent,"
            " row.querySelector('progress').value, row.querySelector('[data-field=note]')"
            ".textContent.split(':')[0]])"
        )
        self.assertEqual(
            [(status, note) for status, _, note in table],
            [("FAILED", "OutOfStockError"), ("COMPLETED", "refunded"), ("COMPLETED", "shipped")],
        )
        self.assertEqual([percent for _, percent, _ in table][1:], [100, 100])
        self.assertLess(table[0][1], 100)
        self.screenshot("order-list.png")

    def test_staff_approve_a_big_order_from_the_approvals_page(self) -> None:
        from selenium.webdriver.common.by import By

        make_user("boss", is_staff=True)
        self.open("/")
        self.fill(username="boss", password="secret-pass-123")
        self.wait_for("document.querySelector('h1')?.textContent === 'My orders'", "the list")
        # 6 × 89.00 is over ORDERS_APPROVAL_OVER_CENTS: the job waits after reserving stock.
        job_id = self.place_order(sku="HIVE", quantity="6")
        self.wait_for(
            "document.querySelector('#job [data-field=status]')?.textContent === 'SCHEDULED'",
            "the order to wait for approval",
        )
        self.open("/approvals/")
        row = f"#approvals tr[data-job-id='{job_id}']"
        self.wait_for(f'document.querySelector("{row}")', "the waiting order listed")
        self.screenshot("approvals.png")
        self.driver.find_element(By.CSS_SELECTOR, f"{row} button.approve").click()
        self.wait_for("document.body.innerText.includes('Order approved.')", "the approval")
        self.open(f"/jobs/{job_id}/")
        self.wait_for(
            "document.querySelector('#job [data-field=status]')?.textContent === 'COMPLETED'",
            "the approved order to complete",
        )
        self.assertIn("shipped", self.js("return document.body.innerText"))

    def test_staff_retry_a_failed_order_from_the_console(self) -> None:
        from django.contrib.auth.models import Permission
        from selenium.webdriver.common.by import By

        from orders import services

        # Staff with the job records' view and change permissions: what the console's pages
        # and its Retry button need.
        ops = make_user("ops", is_staff=True)
        ops.user_permissions.add(  # type: ignore[attr-defined]
            *Permission.objects.filter(
                content_type__app_label="ergate_celery",
                codename__in=["view_ergatejob", "change_ergatejob"],
            )
        )
        self.open("/")
        self.fill(username="ops", password="secret-pass-123")
        self.wait_for("document.querySelector('h1')?.textContent === 'My orders'", "the list")
        failed, shipped = self.place_failing_and_shipped_orders(mugs="25", tees="1")

        # The console, filtered to the failed jobs: only the out-of-stock order is left.
        self.open("/ergate/")
        rows = "Array.from(document.querySelectorAll('#jobs tbody tr[data-job-id]'))"
        # Both orders' jobs, and the one child job packing the shipped order's one line.
        self.wait_for(f"{rows}.length === 3", "both orders and the child listed")
        self.fill(status="FAILED")
        self.wait_for("location.search.includes('status=FAILED')", "the filtered list")
        listed = self.js(f"return {rows}.map(row => [row.dataset.jobId, row.dataset.status])")
        self.assertEqual(listed, [[failed, "FAILED"]])
        self.assertNotIn(shipped, self.js("return document.body.innerText"))
        self.screenshot("console-failed-jobs.png")

        # Its page: the error with its traceback, and the timeline of what ran.
        self.driver.find_element(By.CSS_SELECTOR, f"tr[data-job-id='{failed}'] a").click()
        job = "document.getElementById('ergate-job')"
        self.wait_for(f"{job}?.dataset.status === 'FAILED'", "the job page")
        text = self.js("return document.body.innerText")
        self.assertIn("OutOfStockError: Only 20 × MUG in stock", text)
        self.assertIn("Traceback (most recent call last)", text)
        self.driver.set_window_size(1200, 1000)
        self.screenshot("console-job-failed.png")

        # The warehouse is restocked; a retry runs the order on from reserve_stock.
        with mock.patch.object(services, "STOCK", 100):
            self.driver.find_element(By.CSS_SELECTOR, "button[value=retry]").click()
            self.wait_for("document.body.innerText.includes('Job retried')", "the retry")
            # The page reloads itself every 2 s while the job runs.
            self.wait_for(f"{job}?.dataset.status === 'COMPLETED'", "the retried job to complete")
        text = self.js("return document.body.innerText")
        self.assertIn("retry 1", text)  # the runs after the retry, marked on the timeline
        self.assertIn("Errors of earlier runs", text)
        bars = self.js(f"return Array.from({job}.querySelectorAll('.timeline .bar')).length")
        self.assertEqual(bars, 7)  # validate, reserve_stock (failed); then 5 steps to notify
        self.screenshot("console-job-retried.png")
        self.driver.set_window_size(1200, 800)

    def test_staff_retry_a_failed_order_from_the_admin(self) -> None:
        from django.contrib.auth.models import Permission
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        from orders import services

        # Staff, not superuser: the job records' view and change permissions are what the
        # admin's list, job page and Retry action need.
        clerk = make_user("clerk", is_staff=True)
        clerk.user_permissions.add(  # type: ignore[attr-defined]
            *Permission.objects.filter(
                content_type__app_label="ergate_celery",
                codename__in=["view_ergatejob", "change_ergatejob"],
            )
        )
        self.open("/admin/")
        self.assertIn("/admin/login/", self.driver.current_url)
        self.driver.find_element(By.NAME, "username").send_keys("clerk")
        self.driver.find_element(By.NAME, "password").send_keys("secret-pass-123")
        self.driver.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
        # The login page has the site name too: wait for what only a logged-in page shows,
        # or the next navigation could cut the login short.
        logged_in = "document.getElementById('user-tools') && !location.pathname.includes('login')"
        self.wait_for(logged_in, "the admin index")

        failed, shipped = self.place_failing_and_shipped_orders(mugs="30", tees="2")

        # The job records, then the status filter's FAILED: only the out-of-stock order.
        changelist = "/admin/ergate_celery/ergatejob/"
        self.open(changelist)
        ids = "Array.from(document.querySelectorAll('#result_list tbody th.field-task_id'))"
        self.assertEqual(
            sorted(self.js(f"return {ids}.map(cell => cell.textContent)")),
            sorted([failed, shipped, f"{shipped}.0"]),  # the child packing its one line
        )
        self.driver.find_element(
            By.CSS_SELECTOR, "#changelist-filter a[href*='status=FAILED']"
        ).click()
        self.wait_for("location.search.includes('status=FAILED')", "the filtered list")
        rows = self.js(
            "return Array.from(document.querySelectorAll('#result_list tbody tr')).map(row =>"
            " [row.querySelector('th.field-task_id').textContent,"
            " row.querySelector('td.field-status_name').textContent,"
            " row.querySelector('td.field-step').textContent])"
        )
        self.assertEqual(rows, [[failed, "FAILED", "#1 reserve_stock"]])
        self.screenshot("admin-failed-jobs.png")

        # The job's page reads as a job: status, the error with its traceback, a timeline.
        self.driver.find_element(By.LINK_TEXT, failed).click()
        job = "document.getElementById('ergate-job')"
        self.wait_for(f"{job}?.dataset.status === 'FAILED'", "the admin's job page")
        self.assertEqual(self.js(f"return {job}.dataset.jobId"), failed)
        text = self.js("return document.getElementById('content').innerText")
        self.assertIn(f"process_order job {failed} (FAILED)", text)  # its title
        self.assertIn("OutOfStockError: Only 20 × MUG in stock", text)
        self.assertIn("in step reserve_stock", text)
        self.assertIn("Traceback (most recent call last)", text)
        self.assertNotIn('"status"', text)  # not the record's JSON
        labels = self.js(
            f"return Array.from({job}.querySelectorAll('.timeline .label'))"
            ".map(label => label.title)"
        )
        self.assertEqual(labels, ["validate", "reserve_stock"])
        self.driver.set_window_size(1200, 1100)
        self.screenshot("admin-job-failed.png")
        self.driver.set_window_size(1200, 800)

        # Back in the filtered list: select the job and run the Retry action, the warehouse
        # restocked first. The admin page does not reload itself: reload until it has ended.
        with mock.patch.object(services, "STOCK", 100):
            self.open(f"{changelist}?status=FAILED")
            self.driver.find_element(
                By.XPATH,
                f"//tr[th[normalize-space()='{failed}']]//input[@name='_selected_action']",
            ).click()
            Select(self.driver.find_element(By.NAME, "action")).select_by_value("retry_jobs")
            self.driver.find_element(By.CSS_SELECTOR, "#changelist-form button[name=index]").click()
            self.wait_for(
                "document.querySelector('.messagelist')?.innerText.includes('1 job retried.')",
                "the action's message",
            )
            self.assertEqual(
                self.js("return document.querySelectorAll('.messagelist .warning').length"), 0
            )
            self.open(f"{changelist}?q={failed}")
            self.driver.find_element(By.LINK_TEXT, failed).click()
            self.wait_for(job, "the admin's job page")
            deadline = time.monotonic() + WAIT
            while (shown := self.js(f"return {job}.dataset.status")) != "COMPLETED":
                self.assertNotIn(shown, ("FAILED", "ABORTED", "CANCELLED"))
                self.assertLess(time.monotonic(), deadline, "timed out waiting for COMPLETED")
                time.sleep(0.3)
                self.driver.refresh()
                self.wait_for(job, "the admin's job page")
        text = self.js("return document.getElementById('content').innerText")
        self.assertIn("retry 1", text)
        self.assertIn("Errors of earlier runs", text)
        self.assertEqual(
            self.js(f"return {job}.querySelector('[data-field=retries]').textContent"), "1"
        )
        self.assertEqual(self.js(f"return {job}.querySelector('progress').value"), 100)
        bars = self.js(f"return {job}.querySelectorAll('.timeline .bar').length")
        self.assertEqual(bars, 7)  # validate, reserve_stock (failed); then 5 steps to notify
        self.driver.set_window_size(1200, 1100)
        self.screenshot("admin-job-retried.png")
        self.driver.set_window_size(1200, 800)
