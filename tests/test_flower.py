"""Jobs as Flower shows them: real Flower and a real worker sending events, on Redis."""

import ast
import importlib.util
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

from .apps.cli_workflows import WORKFLOWS
from .services import services_required
from .support import Setup

pytestmark = pytest.mark.setup("redis")

WAIT = 60
SECRET_INPUT = "input-secret-5d1f9a"
SECRET_CONTEXT = "context-secret-c93e07"
STEPS = ("prepare", "process", "finish")


@pytest.fixture
def flower_installed() -> None:
    """Skip when Flower is not installed (fail under ERGATE_REQUIRE_SERVICES)."""
    if importlib.util.find_spec("flower") is not None:
        return
    message = "flower is not installed; pip install 'flower>=2.2,<3' (the test extra has it)"
    if services_required():
        pytest.fail(f"ERGATE_REQUIRE_SERVICES is set and {message}")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(base: str, path: str, **query: str) -> Any:
    url = f"{base}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _wait_for_http(base: str, process: Any) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert process.poll() is None, "flower exited; see its log in the test's tmp_path"
        try:
            _get(base, "/api/tasks", limit="1")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError(f"flower did not answer within {WAIT} s")


def _seen(base: str, job_id: str, within: float) -> bool:
    """Whether Flower lists a task of the job within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _get(base, "/api/tasks", search=job_id):
            return True
        time.sleep(0.2)
    return False


def _tasks_of(base: str, job_id: str, count: int) -> dict[str, Any]:
    """Flower's search for the job id, once it lists `count` finished tasks."""
    deadline = time.monotonic() + WAIT
    found: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = _get(base, "/api/tasks", search=job_id)
        done = [task for task in found.values() if task.get("state") in ("SUCCESS", "FAILURE")]
        if len(done) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"flower lists {found} for job {job_id}")


def test_flower_shows_redacted_step_tasks(setup: Setup, flower_installed: None) -> None:
    for workflow in WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    queue = setup.conf["task_default_queue"]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    flower_env = {"FLOWER_UNAUTHENTICATED_API": "true"}
    worker_args = ("worker", "-E", "-P", "solo", "-Q", queue, "--loglevel", "INFO")
    flower_args = ("flower", "--address=127.0.0.1", f"--port={port}")
    with setup.celery(*flower_args, env=flower_env) as flower, setup.celery(*worker_args):
        _wait_for_http(base, flower)
        # Flower sees only events sent after its receiver is up: run jobs until it saw one.
        deadline = time.monotonic() + WAIT
        while True:
            warm_up = setup.ergate.submit_job("cli_steps", initial_input_value={})
            setup.ergate.wait_for_job(warm_up.id, timeout=WAIT)
            if _seen(base, str(warm_up.id), within=3):
                break
            assert time.monotonic() < deadline, "flower never received the worker's events"

        job = setup.ergate.submit_job(
            "cli_steps",
            initial_input_value={"card": SECRET_INPUT},
            user_context={"customer": SECRET_CONTEXT},
        )
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
        assert done.last_return_value == {"card": SECRET_INPUT, "done": True}
        found = _tasks_of(base, str(job.id), len(STEPS))
        everything = _get(base, "/api/tasks")

    # Searching for the job id lists exactly its step tasks, one per step, in Flower's list.
    assert len(found) == len(STEPS)
    assert set(found) <= set(everything)
    by_step = {task["name"]: task for task in found.values()}
    assert set(by_step) == {f"ergate.cli_steps.{step}" for step in STEPS}
    for index, step in enumerate(STEPS):
        task = by_step[f"ergate.cli_steps.{step}"]
        assert task["state"] == "SUCCESS"
        assert task["uuid"] == f"{STEP_TASK_ID_PREFIX}{job.id}:{index}"
        # The displayed args name the job, workflow and step, and nothing the user sent.
        assert f"job={job.id}" in task["args"]
        assert "workflow=cli_steps" in task["args"]
        assert f"step={step}#{index}" in task["args"]
        assert task["kwargs"] == "{}"
        shown = json.dumps(task)
        assert SECRET_INPUT not in shown
        assert SECRET_CONTEXT not in shown
        # The step task's own result is the small summary, not the job.
        summary = ast.literal_eval(task["result"])
        assert set(summary) == {"job_id", "status", "step", "percent_completed"}
        assert summary["job_id"] == job.id
        assert summary["step"] == step
    last = ast.literal_eval(by_step["ergate.cli_steps.finish"]["result"])
    assert (last["status"], last["percent_completed"]) == ("COMPLETED", 100.0)
    assert warm_up.id not in json.dumps(found)


def test_flower_shows_a_failed_step_as_failure_and_an_aborted_one_not(
    setup: Setup, flower_installed: None
) -> None:
    for workflow in WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    queue = setup.conf["task_default_queue"]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    worker_args = ("worker", "-E", "-P", "solo", "-Q", queue, "--loglevel", "INFO")
    flower_args = ("flower", "--address=127.0.0.1", f"--port={port}")
    flower_env = {"FLOWER_UNAUTHENTICATED_API": "true"}
    with setup.celery(*flower_args, env=flower_env) as flower, setup.celery(*worker_args):
        _wait_for_http(base, flower)
        deadline = time.monotonic() + WAIT
        while True:  # Flower sees only events sent after its receiver is up
            warm_up = setup.ergate.submit_job("cli_steps", initial_input_value={})
            setup.ergate.wait_for_job(warm_up.id, timeout=WAIT)
            if _seen(base, str(warm_up.id), within=3):
                break
            assert time.monotonic() < deadline, "flower never received the worker's events"
        failed = setup.ergate.submit_job("cli_steps", initial_input_value={"fail": True})
        aborted = setup.ergate.submit_job("cli_steps", initial_input_value={"abort": True})
        assert setup.ergate.wait_for_job(failed.id, timeout=WAIT).status.name == "FAILED"
        assert setup.ergate.wait_for_job(aborted.id, timeout=WAIT).status.name == "ABORTED"
        failed_tasks = _tasks_of(base, str(failed.id), 2)
        aborted_tasks = _tasks_of(base, str(aborted.id), 2)
        failed_tab = _get(base, "/api/tasks", state="FAILURE")

    by_step = {task["name"]: task for task in failed_tasks.values()}
    assert by_step["ergate.cli_steps.prepare"]["state"] == "SUCCESS"
    failing = by_step["ergate.cli_steps.process"]
    assert failing["state"] == "FAILURE"
    assert "the cli test asked this step to fail" in failing["exception"]
    assert "ValueError" in failing["traceback"]
    # Flower's Failed tab lists the failed step task, and nothing of the aborted job.
    assert f"{STEP_TASK_ID_PREFIX}{failed.id}:1" in failed_tab
    assert not [
        uuid for uuid in failed_tab if uuid.startswith(f"{STEP_TASK_ID_PREFIX}{aborted.id}:")
    ]
    assert {task["state"] for task in aborted_tasks.values()} == {"SUCCESS"}
