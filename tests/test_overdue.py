"""A scheduled job that nobody released says so: in the CLI, and in a worker's log."""

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from ergate_celery import Job, JobStatus, Wait

from .apps.cli_workflows import WORKFLOWS
from .support import Setup, in_process_worker, wait_until

#: Grace before a job counts as overdue: max(5 * interval, 2 s) = 2 s.
FAST = {"ergate_schedule_interval": 0.2}
HINT = "is celery beat running?"


def _overdue_job(setup: Setup) -> str:
    for workflow in WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    # Due 3 s from now: a submit on a loaded machine (its first connection and reading of the
    # store's clock included) has taken more than 1.5 s, and must still store it SCHEDULED.
    start = datetime.now(UTC) + timedelta(seconds=3)
    job = setup.ergate.submit_job("cli_steps", initial_input_value={}, requested_start_time=start)
    # Past its time and the 2 s grace, and no beat runs.
    time.sleep(max(0.0, (start + timedelta(seconds=2.5) - datetime.now(UTC)).total_seconds()))
    assert setup.ergate.get_job(job.id).status is JobStatus.SCHEDULED
    return str(job.id)


@pytest.mark.setup("redis", "rabbitmq_postgres")
def test_cli_says_a_scheduled_job_is_overdue(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name, **FAST)
    job_id = _overdue_job(setup)
    show = setup.run_celery("ergate", "show", job_id)
    assert show.returncode == 0, show.stderr
    assert "SCHEDULED (overdue by " in show.stdout
    assert HINT in show.stdout
    table = setup.run_celery("ergate", "list")
    assert HINT in table.stdout
    listed = setup.run_celery("ergate", "list", "--json").stdout
    rows = json.loads(listed)
    assert [row["status"] for row in rows] == ["SCHEDULED"]
    assert rows[0]["overdue"] >= 2
    with setup.celery("ergate", "watch", job_id, "--interval", "0.2"):
        wait_until(lambda: HINT in _log(setup, "ergate"), timeout=30, what="watch's hint")
    assert len(_log(setup, "ergate").splitlines()) == 1  # one line until something changes


def _log(setup: Setup, command: str) -> str:
    return "".join(
        log.read_text(errors="replace") for log in setup.tmp_path.glob(f"celery-{command}-*.log")
    )


def test_worker_warns_once_about_due_jobs_nobody_released(
    setup_name: str, make_setup: Callable[..., Setup], caplog: pytest.LogCaptureFixture
) -> None:
    setup = make_setup(setup_name, **FAST)
    job_id = _overdue_job(setup)
    with caplog.at_level(logging.WARNING, logger="ergate_celery"), in_process_worker(setup.app):
        wait_until(lambda: any(HINT in r.getMessage() for r in caplog.records), timeout=10)
        time.sleep(4.5)  # two more checks: no second warning
    warnings = [r.getMessage() for r in caplog.records if HINT in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert job_id in warnings[0]


def test_worker_is_quiet_when_nothing_is_overdue(
    setup_name: str, make_setup: Callable[..., Setup], caplog: pytest.LogCaptureFixture
) -> None:
    setup = make_setup(setup_name, **FAST)
    for workflow in WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    later = datetime.now(UTC) + timedelta(hours=1)
    setup.ergate.submit_job("cli_steps", initial_input_value={}, requested_start_time=later)
    with caplog.at_level(logging.WARNING, logger="ergate_celery"), in_process_worker(setup.app):
        time.sleep(2.5)
    assert not [r for r in caplog.records if HINT in r.getMessage()]


def _waiting(setup: Setup, job_id: str, wait: Wait) -> None:
    """Store a SCHEDULED job whose wait ended 30 s ago (as if beat were down since)."""
    now = datetime.now(UTC)
    setup.ergate.store.create(
        Job(
            id=job_id,
            workflow_name="cli_steps",
            status=JobStatus.SCHEDULED,
            current_step=1,
            current_step_name="work",
            steps_completed=1,
            submitted_at=now - timedelta(minutes=5),
            wait=wait,
        )
    )


@pytest.mark.setup("redis")
def test_cli_says_an_ended_sleep_or_a_passed_signal_timeout_is_overdue(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup = make_setup(setup_name, **FAST)
    for workflow in WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    ended = datetime.now(UTC) - timedelta(seconds=30)
    since = ended - timedelta(minutes=1)
    _waiting(setup, "slept", Wait(step="prepare", since=since, until=ended))
    _waiting(setup, "timed-out", Wait(step="prepare", since=since, until=ended, signal="ok"))
    _waiting(setup, "forever", Wait(step="prepare", since=since, signal="ok"))
    rows = {
        row["id"]: row for row in json.loads(setup.run_celery("ergate", "list", "--json").stdout)
    }
    assert rows["slept"]["overdue"] >= 30
    assert "(its sleep ended) — " + HINT in rows["slept"]["overdue_note"]
    assert "(its signal wait timed out) — " + HINT in rows["timed-out"]["overdue_note"]
    assert "overdue" not in rows["forever"]  # nothing falls due: nothing is late
    shown = json.loads(setup.run_celery("ergate", "show", "timed-out", "--json").stdout)
    assert JobStatus(shown["status"]) is JobStatus.SCHEDULED
    assert shown["overdue"] >= 30
    assert "(its signal wait timed out) — " + HINT in shown["overdue_note"]
    with setup.celery("ergate", "watch", "slept", "--interval", "0.2"):
        wait_until(lambda: "its sleep ended" in _log(setup, "ergate"), timeout=30, what="watch")
