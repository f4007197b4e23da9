"""`celery -A proj ergate ...`, run as the real `celery` command in a subprocess."""

import json
import os
import pty
import select
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import PIPE, CompletedProcess, Popen

import pytest
import redis

from ergate_celery import Job, JobStatus

from .apps.cli_workflows import WORKFLOWS
from .support import ROOT, Setup, in_process_worker, wait_until

pytestmark = pytest.mark.setup("redis")

WAIT = 60
FUTURE_DT = datetime.now(UTC) + timedelta(days=30)
FUTURE = FUTURE_DT.isoformat()


@pytest.fixture
def cli(setup: Setup) -> Setup:
    """The redis setup with the workflows `tests.apps.beat_app` has, for an in-process worker."""
    for workflow in WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    return setup


def ergate(setup: Setup, *args: str) -> CompletedProcess[str]:
    """`celery -A tests.apps.beat_app ergate <args>`."""
    return setup.run_celery("ergate", *args)


def submitted(setup: Setup, *args: str) -> str:
    """Submit through the CLI and return the printed id."""
    done = ergate(setup, "submit", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def wait_status(setup: Setup, job_id: str, status: JobStatus) -> Job:
    def reached() -> Job | None:
        job = setup.ergate.get_job(job_id)
        return job if job.status is status else None

    return wait_until(reached, WAIT, what=f"job {job_id} {status.name}")


def test_submit_list_show_watch(cli: Setup, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    given = {"wait_for": str(gate)}
    queued = submitted(cli, "cli_steps", "--input", json.dumps(given), "--context", '{"u": 1}')
    scheduled = submitted(cli, "branchy", "--input", '"later"', "--at", FUTURE, "--id", "my-id")
    assert scheduled == "my-id"
    assert cli.ergate.get_job(queued).user_context == {"u": 1}

    listed = ergate(cli, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0] == ["ID", "WORKFLOW", "STATUS", "STEP", "PERCENT"]
    # Newest first.
    assert rows[1:] == [
        ["my-id", "branchy", "SCHEDULED", "#0", "route", "0.0%"],
        [queued, "cli_steps", "QUEUED", "#0", "prepare", "0.0%"],
    ]

    only = ergate(cli, "list", "--status", "scheduled", "--json")
    assert json.loads(only.stdout) == [
        {"id": "my-id", "workflow": "branchy", "status": "SCHEDULED", "step": "#0 route"}
        | {"percent": 0.0}
    ]
    by_workflow = ergate(cli, "list", "--workflow", "cli_steps", "--json", "--limit", "5")
    assert [row["id"] for row in json.loads(by_workflow.stdout)] == [queued]
    assert len(ergate(cli, "list", "--limit", "1").stdout.splitlines()) == 2
    assert json.loads(ergate(cli, "list", "--status", "FAILED", "--json").stdout) == []

    # The watcher prints the job before any worker runs, and the first step holds until the
    # watcher has printed RUNNING: it sees each state whatever the machine's speed.
    command = [sys.executable, "-m", "celery", "-A", "tests.apps.beat_app", "ergate", "watch"]
    watcher = Popen(
        [*command, queued, "--interval", "0.05"],
        cwd=ROOT,
        env={**os.environ, "ERGATE_TEST_CONF": json.dumps(cli.conf), "PYTHONPATH": str(ROOT)},
        stdout=PIPE,
        stderr=PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    lines = [watcher.stdout.readline()]
    assert lines[0].split()[1:] == ["QUEUED", "#0", "prepare", "0.0%"], lines
    with in_process_worker(cli.app):
        while lines[-1] and lines[-1].split()[1] != "RUNNING":
            lines.append(watcher.stdout.readline())
        gate.touch()
        rest, errors = watcher.communicate(timeout=WAIT)
    assert watcher.returncode == 0, errors
    lines += rest.splitlines()
    states = [line.split()[1] for line in lines]
    assert states[:2] == ["QUEUED", "RUNNING"], lines
    assert states[-1] == "COMPLETED", lines
    assert lines[-1].endswith("100.0%"), lines

    shown = ergate(cli, "show", queued)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines())
    assert fields["id"] == queued
    assert fields["status"] == "COMPLETED"
    assert fields["steps_completed"] == "3"
    assert fields["percent_completed"] == "100.0"
    assert json.loads(fields["last_return_value"]) == {**given, "done": True}
    assert json.loads(fields["user_context"]) == {"u": 1}
    as_json = json.loads(ergate(cli, "show", queued, "--json").stdout)
    assert Job.model_validate(as_json).status is JobStatus.COMPLETED

    # Finished jobs are listed too, until they expire.
    statuses = {
        row["id"]: row["status"] for row in json.loads(ergate(cli, "list", "--json").stdout)
    }
    assert statuses == {queued: "COMPLETED", "my-id": "SCHEDULED"}


def test_watch_and_show_a_failed_job(cli: Setup) -> None:
    job_id = submitted(cli, "cli_steps", "--input", '{"fail": true}')
    with in_process_worker(cli.app):
        watched = ergate(cli, "watch", job_id, "--interval", "0.1")
    assert watched.returncode == 1
    assert watched.stdout.splitlines()[-1].split()[1] == "FAILED"
    assert "ValueError: the cli test asked this step to fail" in watched.stderr

    shown = ergate(cli, "show", job_id)
    assert shown.returncode == 0
    assert "error                 ValueError in step process: the cli test asked" in shown.stdout
    assert "Traceback (most recent call last)" in shown.stdout
    assert 'raise ValueError("the cli test asked this step to fail")' in shown.stdout


def test_watch_draws_a_progress_bar_on_a_terminal(cli: Setup) -> None:
    job_id = submitted(cli, "cli_steps", "--input", '{"sleep": 0.2}')
    command = [sys.executable, "-m", "celery", "-A", "tests.apps.beat_app", "ergate", "watch"]
    environment = {**os.environ, "ERGATE_TEST_CONF": json.dumps(cli.conf)}
    environment["PYTHONPATH"] = str(ROOT)
    with in_process_worker(cli.app):
        main, terminal = pty.openpty()
        process = Popen(
            [*command, job_id, "--interval", "0.1"],
            cwd=ROOT,
            env=environment,
            stdout=terminal,
            stderr=PIPE,
        )
        os.close(terminal)
        try:
            screen = _read_terminal(main, WAIT)
        finally:
            os.close(main)
            code = process.wait(timeout=WAIT)
            assert process.stderr is not None
            process.stderr.close()
    assert code == 0
    assert f"job {job_id}".encode() in screen
    assert b"100%" in screen
    assert b"#" in screen
    assert b"COMPLETED" in screen


def _read_terminal(fd: int, timeout: float) -> bytes:
    """Everything written to the terminal until its other side closes."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the command exited and closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def test_cancel_a_scheduled_job_then_again(cli: Setup) -> None:
    job_id = submitted(cli, "cli_steps", "--input", "{}", "--at", FUTURE)
    first = ergate(cli, "cancel", job_id)
    assert (first.returncode, first.stdout) == (0, "CANCELLED\n")
    again = ergate(cli, "cancel", job_id)
    assert (again.returncode, again.stdout) == (1, "CANCELLED\n")
    assert "had already finished as CANCELLED; unchanged" in again.stderr
    assert cli.ergate.get_job(job_id).status is JobStatus.CANCELLED


def test_cancel_a_running_job_then_a_completed_one(cli: Setup, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    slow = submitted(cli, "cli_steps", "--input", json.dumps({"wait_for": str(gate)}))
    quick = submitted(cli, "cli_steps", "--input", "{}")
    with in_process_worker(cli.app):
        wait_status(cli, slow, JobStatus.RUNNING)
        cancelled = ergate(cli, "cancel", slow)
        assert (cancelled.returncode, cancelled.stdout) == (0, "CANCELLING\n")
        gate.touch()  # the running first step finishes; no later step runs
        watched = ergate(cli, "watch", slow, "--interval", "0.1")
        assert watched.returncode == 1
        assert watched.stdout.splitlines()[-1].split()[1] == "CANCELLED"
        cli.ergate.wait_for_job(quick, timeout=WAIT)
    assert cli.ergate.get_job(slow).steps_completed == 1

    completed = ergate(cli, "cancel", quick)
    assert (completed.returncode, completed.stdout) == (1, "COMPLETED\n")
    assert cli.ergate.get_job(quick).status is JobStatus.COMPLETED


def test_graph_of_a_branching_workflow(cli: Setup) -> None:
    drawn = ergate(cli, "graph", "branchy")
    assert drawn.returncode == 0, drawn.stderr
    lines = [line.strip() for line in drawn.stdout.splitlines()]
    assert lines[0] == "flowchart TD"
    assert {'s0["route"]', 's1["check"]', 's2["ship"]', "END([END])"} <= set(lines)
    edges = [line for line in lines if "-->" in line]
    assert sorted(edges) == sorted(
        [
            "s0 --> s1",
            "s0 -->|GoToStep| s2",
            "s0 -->|GoToEnd| END",
            "s1 --> s2",
            "s1 -->|GoToEnd| END",
            "s2 --> END",
        ]
    )
    linear = ergate(cli, "graph", "cli_steps").stdout
    assert [line.strip() for line in linear.splitlines() if "-->" in line] == [
        "s0 --> s1",
        "s1 --> s2",
        "s2 --> END",
    ]
    unknown = ergate(cli, "graph", "nope")
    assert unknown.returncode == 2
    assert "No workflow named 'nope'" in unknown.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cli_steps", "--input", "{not json"], "--input is not valid JSON"),
        (["cli_steps", "--input", "{}", "--context", "[1,"], "--context is not valid JSON"),
        (["nope", "--input", "{}"], "UnknownWorkflowError: No workflow named 'nope'"),
        (["cli_steps", "--input", '"a string"'], "does not fit the input type"),
        (["cli_steps", "--input", "{}", "--at", "next tuesday"], "--at 'next tuesday' is not a"),
        (["cli_steps", "--input", "{}", "--deadline", "1 h"], "--deadline '1 h' is not a"),
        (["cli_steps", "--input", "{}", "--tag", "order"], "--tag 'order' is not KEY=VALUE"),
        (["cli_steps", "--input", "{}", "--priority", "256"], "--priority"),
        (["cli_steps", "--input", "{}", "--id", "taken"], "DuplicateJobError"),
        (["cli_steps"], "Missing option '--input'"),
    ],
)
def test_bad_submissions_exit_2_and_submit_nothing(
    cli: Setup, args: list[str], message: str
) -> None:
    original = cli.ergate.submit_job(
        "cli_steps", initial_input_value={"keep": 1}, id="taken", requested_start_time=FUTURE_DT
    )
    done = ergate(cli, "submit", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""
    store, end = cli.ergate.store, datetime(9999, 1, 1, tzinfo=UTC)
    indexed = [store.get(i) for i in store.due(end, 1000) + store.stale(end, 1000)]
    assert [job.id for job in indexed if job and job.workflow_name == "cli_steps"] == ["taken"]
    assert redis.Redis.from_url(cli.conf["broker_url"]).llen(cli.conf["task_default_queue"]) == 0
    assert cli.ergate.get_job("taken") == original


def test_other_bad_input(cli: Setup) -> None:
    missing = ergate(cli, "show", "no-such-job")
    assert missing.returncode == 2
    assert "No job with id 'no-such-job'" in missing.stderr
    assert ergate(cli, "cancel", "no-such-job").returncode == 2
    assert ergate(cli, "watch", "no-such-job").returncode == 2
    assert ergate(cli, "list", "--status", "COMPLETED").returncode == 0
    assert ergate(cli, "list", "--status", "BOGUS").returncode == 2
    not_a_duration = ergate(cli, "list", "--since", "yesterday")
    assert not_a_duration.returncode == 2
    assert "is not a duration (30s, 15m, 1h, 2d, 1w) or an ISO 8601 date" in not_a_duration.stderr
    assert "is not KEY=VALUE" in ergate(cli, "list", "--tag", "order").stderr
    unknown = ergate(cli, "list", "--workflow", "nope")
    assert unknown.returncode == 2
    assert "UnknownWorkflowError" in unknown.stderr
    assert ergate(cli, "retry", "no-such-job").returncode == 2
    assert ergate(cli, "retry").returncode == 2
    assert ergate(cli, "pause", "nope").returncode == 2
    assert ergate(cli, "resume", "nope").returncode == 2
    assert cli.ergate.paused_workflows() == set()


def test_list_by_tag_and_since_retry_pause_resume(cli: Setup) -> None:
    cli.ergate.pause_workflow("cli_steps")
    ids = [
        str(cli.ergate.submit_job("cli_steps", initial_input_value={}, tags={"n": str(i)}).id)
        for i in range(12)
    ]
    tagged = json.loads(ergate(cli, "list", "--tag", "n=3", "--since", "1h", "--json").stdout)
    assert [row["id"] for row in tagged] == [ids[3]]
    assert json.loads(ergate(cli, "list", "--since", "1h", "--json").stdout)[0]["id"] == ids[-1]
    for job_id in ids:
        cli.ergate.cancel_job(job_id)
    refused = ergate(cli, "retry", "--status", "CANCELLED", "--workflow", "cli_steps")
    assert refused.returncode == 1  # 12 jobs: asks, and stdin has no answer
    assert "Retry 12 jobs?" in refused.stdout
    assert {cli.ergate.get_job(i).status for i in ids} == {JobStatus.CANCELLED}
    one = ergate(cli, "retry", ids[0])
    assert one.returncode == 0, one.stderr
    assert ergate(cli, "retry", ids[0]).returncode == 1  # QUEUED now: nothing to retry
    many = ergate(cli, "retry", "--status", "CANCELLED", "--yes")
    assert many.stdout.strip() == "retried 11 jobs"
    assert ergate(cli, "pause", "cli_steps").stdout.strip() == "cli_steps was already paused"
    resumed = ergate(cli, "resume", "cli_steps")
    assert resumed.returncode == 0, resumed.stderr
    assert cli.ergate.paused_workflows() == set()


def test_submit_with_tags_priority_deadline_and_a_start_in_a_duration(cli: Setup) -> None:
    before = datetime.now(UTC)
    job_id = submitted(
        cli,
        "cli_steps",
        "--input",
        "{}",
        "--at",
        "30d",
        "--deadline",
        "2099-01-01T00:00:00+01:00",
        "--tag",
        "order=A-9",
        "--tag",
        "shop=eu",
        "--priority",
        "7",
    )
    job = cli.ergate.get_job(job_id)
    assert job.status is JobStatus.SCHEDULED
    assert (job.tags, job.priority) == ({"order": "A-9", "shop": "eu"}, 7)
    assert job.deadline == datetime(2098, 12, 31, 23, 0, tzinfo=UTC)
    assert job.requested_start_time is not None
    assert (
        before + timedelta(days=30)
        <= job.requested_start_time
        <= datetime.now(UTC) + timedelta(days=30)
    )
    since_a_date = ergate(cli, "list", "--since", before.date().isoformat(), "--json")
    assert [row["id"] for row in json.loads(since_a_date.stdout)] == [job_id]


def test_workflows_lists_the_registered_ones_and_which_are_paused(cli: Setup) -> None:
    cli.ergate.pause_workflow("branchy")
    done = ergate(cli, "workflows")
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()}
    assert lines["branchy"] == "paused"
    assert lines["cli_steps"] == "running"
    assert "prepare → " in done.stdout
    rows = {row["name"]: row for row in json.loads(ergate(cli, "workflows", "--json").stdout)}
    assert rows["branchy"]["paused"] is True
    assert rows["cli_steps"]["paused"] is False
    assert rows["cli_steps"]["steps"][0] == "prepare"


def test_hostile_input_is_one_error_line_and_exit_2(cli: Setup) -> None:
    deep = "[" * 30_000 + "]" * 30_000
    for args, message in (
        (["list", "--since", "99999999999d"], "is out of range: write a shorter duration"),
        (["list", "--since", "0001-01-01T00:00+05:00"], "a date between 0001-01-02 and"),
        (["submit", "cli_steps", "--input", deep], "--input nests lists or objects too deeply"),
        (["signal", "some-job", "go", "--payload", deep], "--payload nests lists or objects"),
    ):
        done = ergate(cli, *args)
        assert done.returncode == 2, (args[:2], done.stderr[-500:])
        assert done.stderr.startswith("Error: "), done.stderr[-500:]
        assert message in done.stderr
        assert "Traceback" not in done.stderr
    broken = cli.run_celery(
        "ergate", "submit", "cli_steps", "--input", "{}", module="tests.apps.broken_app"
    )
    assert broken.returncode == 2
    assert broken.stderr.startswith("Error: the workflows of app 'broken_app' cannot be imported")
    assert "RuntimeError: ORDERS_API_URL is not set" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_commands_are_celery_commands_with_no_color_and_quiet(cli: Setup) -> None:
    help_text = ergate(cli, "list", "--help").stdout
    assert "Filters:" in help_text  # options grouped as Celery's own commands group theirs
    assert "Output:" in help_text
    cli.ergate.submit_job("cli_steps", initial_input_value={}, requested_start_time=FUTURE_DT)
    cli.ergate.cancel_job(cli.ergate.list_jobs().jobs[0].id)
    coloured = _on_a_terminal(cli, "ergate", "list")
    assert "\x1b[" in coloured  # CANCELLED in colour on a terminal
    assert "\x1b[" not in _on_a_terminal(cli, "--no-color", "ergate", "list")
    cli.ergate.store.delete(str(cli.ergate.list_jobs().jobs[0].id))
    assert "(no jobs)" in ergate(cli, "list").stderr
    assert cli.run_celery("--quiet", "ergate", "list").stderr == ""


def _on_a_terminal(setup: Setup, *args: str) -> str:
    """What `celery -A tests.apps.beat_app <args>` prints with a terminal as its stdout."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "ERGATE_TEST_CONF": json.dumps(setup.conf), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "celery", "-A", "tests.apps.beat_app", *args]
    with Popen(command, cwd=ROOT, env=env, stdout=secondary, stderr=PIPE) as process:
        os.close(secondary)
        try:
            screen = _read_terminal(primary, WAIT)
        finally:
            os.close(primary)
            process.wait(timeout=WAIT)
    return screen.decode(errors="replace")


def test_show_and_list_name_the_children_of_a_fan_out(setup: Setup) -> None:
    from .apps import fan_out_app

    for workflow in fan_out_app.WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    order = {"child": "fo_square", "count": 25}
    job_id = str(setup.ergate.submit_job("fo_parent", initial_input_value=order).id)
    with in_process_worker(setup.app):
        setup.ergate.wait_for_job(job_id, timeout=WAIT)
    shown = setup.run_celery("ergate", "show", job_id, module="tests.apps.fan_out_app")
    assert shown.returncode == 0, shown.stderr
    assert "children (25; 25 of the last 25 ended)" in shown.stdout
    assert f"{job_id}.5   fo_square  FAILED" in shown.stdout
    assert f"celery ergate list --parent {job_id}" in shown.stderr  # 20 of 25 shown: a remark
    listed = setup.run_celery(
        "ergate",
        "list",
        "--parent",
        job_id,
        "--json",
        "--limit",
        "100",
        module="tests.apps.fan_out_app",
    )
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [row["id"] for row in rows] == [f"{job_id}.{n}" for n in range(25)]
