"""The example Django project: its own test suite (on the embedded defaults, and on Redis and
PostgreSQL), its browser test in headless Chromium, and the script behind `make demo`.

Each runs in a subprocess, in a var/ folder of its own: Django can be configured once per
process, and tests/test_django_db_backend.py configures it its own way.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .services import PostgresService, RedisService, services_required

PROJECT = Path(__file__).resolve().parent.parent / "example_project"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Variables that would point the project elsewhere than the test's own embedded setup.
PROJECT_ENV = (
    "DJANGO_SETTINGS_MODULE",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "DATABASE_URL",
    "SHOP_VAR_DIR",
    "ORDERS_SCREENSHOT_DIR",
)


def run_in_project(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> str:
    """Run `python <args>` in example_project/ with var/ under `tmp_path`; its output."""
    environment = {k: v for k, v in os.environ.items() if k not in PROJECT_ENV}
    environment.update(SHOP_VAR_DIR=str(tmp_path / "var"), PYTHONUNBUFFERED="1", **(env or {}))
    result = subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    (tmp_path / "output.log").write_text(result.stdout)
    tail = "\n".join(result.stdout.splitlines()[-60:])
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{tail}"
    return result.stdout


def django_tests(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> int:
    """Run `manage.py test`; fails unless every test passed and none was skipped."""
    output = run_in_project(tmp_path, "manage.py", "test", "--noinput", "-v", "2", *args, env=env)
    summary = re.search(r"^Ran (\d+) tests? in [\d.]+s\n\n(.+)$", output, re.MULTILINE)
    assert summary is not None, output[-3000:]
    assert summary.group(2) == "OK", f"{summary.group(2)}:\n{output[-3000:]}"
    return int(summary.group(1))


def test_example_project_suite(tmp_path: Path) -> None:
    assert django_tests(tmp_path, "--exclude-tag", "browser") >= 20


def test_example_project_suite_on_redis_and_postgres(
    tmp_path: Path, redis_service: RedisService, postgres_service: PostgresService
) -> None:
    redis_service.flush()
    try:
        # The environment switches of example_project/README.md; Django's test database is
        # test_<name>, of this run's own.
        env = {
            "CELERY_BROKER_URL": redis_service.url,
            "DATABASE_URL": postgres_service.own_database_url,
        }
        assert django_tests(tmp_path, "--exclude-tag", "browser", env=env) >= 20
    finally:
        redis_service.flush()


def test_example_project_in_headless_chromium(tmp_path: Path) -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package")
    if missing:
        message = (
            f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver "
            'and pip install -e ".[test]"'
        )
        if services_required():
            pytest.fail(f"ERGATE_REQUIRE_SERVICES is set and {message}")
        pytest.skip(message)
    shots = tmp_path / "screenshots"
    django_tests(tmp_path, "--tag", "browser", env={"ORDERS_SCREENSHOT_DIR": str(shots)})
    names = sorted(path.name for path in shots.glob("*.png"))
    expected = {
        "order-detail.png",
        "order-list.png",
        "console-job-retried.png",
        "admin-job-failed.png",
        "admin-job-retried.png",
    }
    assert expected <= set(names), names
    # A copy for people to look at (example_project/var/ is not versioned).
    keep = PROJECT / "var" / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(shots / name, keep / name)


def test_demo_script(tmp_path: Path) -> None:
    """`make demo` end to end: worker, beat and web server processes, orders via HTTP."""
    output = run_in_project(tmp_path, "demo.py", timeout=180)
    assert re.search(r"^Demo OK in [\d.]+ s\.$", output, re.MULTILINE), output[-3000:]
    assert "CANCELLED" in output
    assert "FAILED " in output  # the out-of-stock order, as expected


#: In `manage.py shell`: a finished job's record is written by another thread (as a worker
#: would write it), then the plain `AsyncResult` of the shell's own thread reads it.
_SHELL = """
import threading
from datetime import UTC, datetime
from celery.result import AsyncResult
from ergate_celery import ErgateCelery, Job, JobStatus
from shop.celery import app

def store():
    job = Job(id="shell-1", workflow_name="process_order", status=JobStatus.COMPLETED,
              last_return_value={"ok": True}, submitted_at=datetime.now(UTC),
              finished_at=datetime.now(UTC))
    ErgateCelery.of(app).store.create(job)

writer = threading.Thread(target=store)
writer.start()
writer.join()
result = AsyncResult("shell-1")
print("ready:", result.ready(), "value:", result.get(timeout=20)["last_return_value"])
"""


def test_plain_async_result_in_manage_py_shell(tmp_path: Path) -> None:
    run_in_project(tmp_path, "manage.py", "migrate", "--noinput", "-v", "0")
    output = run_in_project(tmp_path, "manage.py", "shell", "-c", _SHELL, timeout=120)
    assert "ready: True value: {'ok': True}" in output
