#!/usr/bin/env python
"""The example shop end to end, on a bare machine: `make demo`.

Migrates the database and creates the user demo (password demo), then starts a Celery
worker, Celery beat and Django's development server (their logs go to var/logs/). It then
acts as a browser would: logs in, places orders through the order form, follows their jobs
through the JSON endpoint, and checks that each ended as expected. Every process it started
is stopped at the end, also on errors and Ctrl-C. Exit status 0 means every check passed.

    .venv/bin/python example_project/demo.py           # the demo
    .venv/bin/python example_project/demo.py --keep    # then keep the shop running to browse
"""

from __future__ import annotations

import argparse
import contextlib
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
USERNAME = PASSWORD = "demo"
#: The whole run, start-up included, must finish within this many seconds.
TIME_LIMIT = 110.0
FINAL = {"COMPLETED", "FAILED", "ABORTED", "CANCELLED", "EXPIRED"}


@dataclass
class Order:
    """One order the demo places, and how its job must end."""

    label: str
    fields: dict[str, str]
    expect_status: str
    expect_note: str = ""
    start_in: float | None = None  # seconds from now: the job waits SCHEDULED
    cancel: bool = False
    approve: bool = False  # waits for staff approval; the demo approves it once it waits
    approved: bool = False
    job_id: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """What differs from the expected end; empty when the job ended as it should."""
        state, found = self.state, []
        if state.get("status") != self.expect_status:
            found.append(f"status {state.get('status')}, expected {self.expect_status}")
        note = state.get("outcome") or state.get("error") or ""
        if self.expect_note not in note:
            found.append(f"result {note!r}, expected {self.expect_note!r}")
        if self.approve and ("SCHEDULED" not in self.seen or not self.approved):
            found.append(f"never seen waiting for approval, then approved ({self.seen})")
        if self.start_in is not None and not self.cancel:
            if "SCHEDULED" not in self.seen:
                found.append("never seen SCHEDULED")
            started, wanted = state.get("started_at"), state.get("requested_start_time")
            if not started or not wanted or started < wanted:
                found.append(f"started at {started}, before its start time {wanted}")
        return found


ORDERS = [
    Order("2 mugs", {"sku": "MUG", "quantity": "2"}, "COMPLETED", "shipped"),
    Order("1 T-shirt", {"sku": "TEE", "quantity": "1"}, "COMPLETED", "shipped"),
    Order(
        "declined card",
        {"sku": "HIVE", "quantity": "1", "card": "declined"},
        "COMPLETED",
        "refunded",
    ),
    Order("50 mugs (out of stock)", {"sku": "MUG", "quantity": "50"}, "FAILED", "OutOfStockError"),
    Order("3 T-shirts in 5 s", {"sku": "TEE", "quantity": "3"}, "COMPLETED", "shipped", start_in=5),
    Order("1 mug in 1 min, cancelled", {"sku": "MUG"}, "CANCELLED", start_in=60, cancel=True),
    Order(
        "6 kits (needs approval)",
        {"sku": "HIVE", "quantity": "6"},
        "COMPLETED",
        "shipped",
        approve=True,
    ),
]


class DemoError(Exception):
    """A step of the demo did not go as it should."""


# Processes -------------------------------------------------------------------------------


class Processes:
    """The worker, beat and web server: started with their logs in var/logs, all stopped."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": "shop.settings"}
        # A session of its own: Ctrl-C reaches only this script, which stops the group.
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=HERE,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append((name, process, log))
        return process

    def check_alive(self) -> None:
        for name, process, _ in self.started:
            if process.poll() is not None:
                raise DemoError(f"{name} exited with {process.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_log(self, name: str, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while pattern not in (self.logs / f"{name}.log").read_text(errors="replace"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(f"{name} did not log {pattern!r} in {timeout:.0f} s")
            time.sleep(0.1)

    def stop_all(self) -> None:
        """Stop every started process group: SIGTERM, then SIGKILL after a grace period."""
        for _, process, _ in reversed(self.started):
            if process.poll() is None:
                process.terminate()  # the worker's warm shutdown stops its own pool
        for _, process, log in reversed(self.started):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            # Then the whole group: a worker's pool processes must not outlive it.
            _signal_group(process, signal.SIGKILL)
            log.close()
        self.started.clear()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# HTTP ------------------------------------------------------------------------------------


@dataclass
class Page:
    url: str
    status: int
    body: str

    def csrf_token(self) -> str:
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', self.body)
        if match is None:
            raise DemoError(f"No CSRF token on {self.url}")
        return match.group(1)


class Browser:
    """What a browser does, with urllib: cookies, CSRF tokens from forms, redirects."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def open(self, path: str, data: dict[str, str] | None = None) -> Page:
        body = None if data is None else urllib.parse.urlencode(data).encode()
        request = urllib.request.Request(urllib.parse.urljoin(self.base_url, path), data=body)
        try:
            with self.opener.open(request, timeout=30) as response:
                return Page(response.url, response.status, response.read().decode())
        except urllib.error.HTTPError as error:
            return Page(error.url, error.code, error.read().decode(errors="replace"))

    def submit(self, form_path: str, fields: dict[str, str], action: str | None = None) -> Page:
        """Open the page with the form, then post `fields` with the form's CSRF token."""
        token = self.open(form_path).csrf_token()
        return self.open(action or form_path, {"csrfmiddlewaretoken": token, **fields})

    def json(self, path: str) -> dict[str, Any]:
        page = self.open(path)
        if page.status != 200:
            raise DemoError(f"GET {path}: HTTP {page.status}")
        result: dict[str, Any] = json.loads(page.body)
        return result


# The demo --------------------------------------------------------------------------------


def prepare_database() -> Path:
    """Migrate and create the demo user; returns var/ (SHOP_VAR_DIR)."""
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", interactive=False, verbosity=0)
    user, _ = get_user_model().objects.update_or_create(
        username=USERNAME,
        defaults={"email": "demo@example.com", "is_staff": True, "is_superuser": True},
    )
    user.set_password(PASSWORD)
    user.save()
    connections.close_all()  # the server and the worker open their own
    var_dir: Path = settings.VAR_DIR
    return var_dir


def place_orders(browser: Browser) -> None:
    for order in ORDERS:
        fields = {"sku": "MUG", "quantity": "1", "card": "4242424242424242", "start_at": ""}
        fields.update(order.fields)
        if order.start_in is not None:
            # The form reads the time in the shop's TIME_ZONE, UTC.
            start = datetime.now(UTC) + timedelta(seconds=order.start_in)
            fields["start_at"] = start.strftime("%Y-%m-%dT%H:%M:%S")
        page = browser.submit("/orders/new/", fields)
        match = re.search(r"/jobs/([0-9a-f-]{36})/$", page.url)
        if page.status != 200 or match is None:
            raise DemoError(f"Placing {order.label!r} did not lead to its job page: {page.url}")
        order.job_id = match.group(1)
        order.state = browser.json(f"/jobs/{order.job_id}.json")
        order.seen.append(order.state["status"])
        if order.cancel:
            detail = f"/jobs/{order.job_id}/"
            browser.submit(detail, {}, action=f"{detail}cancel/")


def bad_order_is_refused(browser: Browser) -> str:
    """A quantity of 0 shows the form again with the error, and places nothing."""
    before = browser.open("/").body.count("data-job-id=")
    fields = {"sku": "MUG", "quantity": "0", "card": "4242424242424242", "start_at": ""}
    page = browser.submit("/orders/new/", fields)
    errors: list[str] = re.findall(r'<ul class="errorlist"[^>]*><li>([^<]+)</li>', page.body)
    if not page.url.endswith("/orders/new/") or not errors:
        raise DemoError(f"A quantity of 0 was not refused with a form error ({page.url})")
    if browser.open("/").body.count("data-job-id=") != before:
        raise DemoError("A refused order was placed anyway")
    return errors[0]


def follow(browser: Browser, show: Callable[[float], None], started: float) -> None:
    deadline = started + TIME_LIMIT - 10
    while True:
        for order in ORDERS:
            if order.state.get("status") not in FINAL:
                order.state = browser.json(f"/jobs/{order.job_id}.json")
                if order.state["status"] != order.seen[-1]:
                    order.seen.append(order.state["status"])
                if order.approve and not order.approved and order.state["status"] == "SCHEDULED":
                    # As staff would from /approvals/: the job goes on at once.
                    action = f"/approvals/{order.job_id}/"
                    browser.submit("/approvals/", {"decision": "approve"}, action=action)
                    order.approved = True
        show(time.monotonic() - started)
        if all(order.state["status"] in FINAL for order in ORDERS):
            return
        if time.monotonic() > deadline:
            raise DemoError("Some jobs did not finish in time")
        time.sleep(0.25)


def row(order: Order) -> str:
    state = order.state
    percent = float(state.get("percent") or 0.0)
    bar = "#" * round(percent / 5) + "." * (20 - round(percent / 5))
    note = state.get("outcome") or state.get("error") or state.get("step") or ""
    return f"  {order.label:<27} {state.get('status', ''):<10} [{bar}] {percent:5.1f}%  {note}"


class Display:
    """Redraws the table in place on a terminal; elsewhere prints the rows that changed."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.drawn = 0
        self.last: dict[str, str] = {}

    def __call__(self, elapsed: float) -> None:
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            lines = [f"  {elapsed:5.1f} s", *(row(order)[:width] for order in ORDERS)]
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            print(up + "".join(f"\x1b[2K{line}\n" for line in lines), end="", flush=True)
            self.drawn = len(lines)
            return
        for order in ORDERS:
            coarse = f"{order.state.get('status')} {float(order.state.get('percent') or 0) // 20}"
            if self.last.get(order.job_id) != coarse:
                self.last[order.job_id] = coarse
                print(f"{elapsed:5.1f} s {row(order)}", flush=True)


def check_admin(browser: Browser) -> str:
    """The admin lists the job records (as django-celery-results task results, and in
    ergate_celery's job admin)."""
    found = []
    for path in ("/admin/django_celery_results/taskresult/", "/admin/ergate_celery/ergatejob/"):
        page = browser.open(path)
        missing = [order.label for order in ORDERS if order.job_id not in page.body]
        if page.status != 200 or missing:
            raise DemoError(f"The admin page {path} misses {missing} (HTTP {page.status})")
        found.append(path)
    return ", ".join(found)


def run(keep: bool) -> int:
    started = time.monotonic()
    print("Preparing the database and the user demo/demo ...", flush=True)
    var_dir = prepare_database()
    logs = var_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes = Processes(logs)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/"
    try:
        print(f"Starting a Celery worker, Celery beat and the web server on {base_url} ...")
        processes.start(
            "worker",
            *("-m", "celery", "-A", "shop", "worker", "-P", "prefork", "-c", "2", "-l", "INFO"),
            *("-n", "demo@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"),
        )
        processes.start("beat", "-m", "celery", "-A", "shop", "beat", "-l", "INFO")
        processes.start("web", "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload")
        processes.wait_for_log("worker", " ready.", timeout=60)
        browser = Browser(base_url)
        while browser.open("/accounts/login/").status != 200:
            processes.check_alive()
            time.sleep(0.2)
        print(f"Up after {time.monotonic() - started:.1f} s. Logging in as {USERNAME} ...")
        login = browser.submit("/accounts/login/", {"username": USERNAME, "password": PASSWORD})
        if urllib.parse.urlparse(login.url).path != "/":
            raise DemoError(f"Logging in failed: ended on {login.url}")
        refused = bad_order_is_refused(browser)
        print(f"An order of 0 mugs is refused by the form: {refused!r}")
        print("Placing orders through the form, then following their jobs:")
        place_orders(browser)
        processes.check_alive()
        follow(browser, Display(), started)
        admin = check_admin(browser)
        problems = {order.label: order.problems() for order in ORDERS if order.problems()}
        print("\nFinal state:")
        for order in ORDERS:
            print(("FAIL" if order.label in problems else "ok  ") + row(order)[2:])
        scheduled = next(o for o in ORDERS if o.start_in is not None and not o.cancel).state
        print(
            f"\nThe scheduled job waited SCHEDULED until {scheduled['requested_start_time']}; "
            f"beat released it, and it started at {scheduled['started_at']}."
        )
        print(
            "The 6 kits waited SCHEDULED for staff approval (WaitForSignal), holding no worker; "
            "approving it from /approvals/ (signal_job) let it go on at once."
        )
        print(f"\nThe admin lists all {len(ORDERS)} jobs: {admin}")
        print(f"Logs: {logs}; order e-mails: {var_dir / 'mail'}")
        if problems:
            for label, found in problems.items():
                print(f"FAILED: {label}: {'; '.join(found)}")
            return 1
        print(f"Demo OK in {time.monotonic() - started:.1f} s.")
        if keep:
            print(f"\nThe shop stays up at {base_url} (log in as demo / demo); Ctrl-C stops it.")
            while True:
                processes.check_alive()
                time.sleep(1)
        return 0
    except DemoError as error:
        print(f"\nDEMO FAILED: {error}", file=sys.stderr)
        for name in ("worker", "beat", "web"):
            print(f"--- last lines of {logs / name}.log:\n{processes.tail(name)}", file=sys.stderr)
        return 1
    finally:
        print("Stopping the worker, beat and the web server ...", flush=True)
        processes.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the shop running afterwards")
    args = parser.parse_args()
    # `kill` or a stopped `make` unwinds like Ctrl-C, so the processes are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run(keep=args.keep)
    except KeyboardInterrupt:
        print("\nInterrupted; every process the demo started is stopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
