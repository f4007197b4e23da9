"""`AsyncResult(job.id)`: ready, get, successful and failed work for jobs and never wait
forever; other tasks' results are Celery's as ever."""

from typing import Any

import pytest
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from ergate_celery import JobFailedError, JobResult, Workflow

from .support import Setup
from .workflows import fail_or_abort

WAIT = 30


def _register(setup: Setup) -> None:
    workflow = Workflow(unique_name="outcomes")

    @workflow.step
    def decide(x: str) -> str:
        return fail_or_abort(x)

    setup.ergate.register_workflow(workflow)

    @setup.app.task(name="plain_add", shared=False)
    def plain_add(a: int, b: int) -> int:
        return a + b


def test_async_result_of_a_job_is_ready_and_gets_without_waiting_forever(
    setup: Setup, worker: Any
) -> None:
    _register(setup)
    with worker():
        done = setup.ergate.submit_job("outcomes", initial_input_value="ok")
        failed = setup.ergate.submit_job("outcomes", initial_input_value="fail")
        aborted = setup.ergate.submit_job("outcomes", initial_input_value="abort")
        for job in (done, failed, aborted):
            setup.ergate.wait_for_job(job.id, timeout=WAIT)
        # The app's AsyncResult (what `celery result` and tasks use) is a JobResult.
        app_result = setup.app.AsyncResult(done.id)
        assert isinstance(app_result, JobResult)
        assert app_result.state == "COMPLETED"
        assert (app_result.ready(), app_result.successful(), app_result.failed()) == (
            True,
            True,
            False,
        )
        assert app_result.get(timeout=5)["last_return_value"] == "ok"
        # The plain class, in the thread that uses the store, is ready and gets too.
        plain = AsyncResult(done.id, app=setup.app)
        assert plain.ready()
        assert plain.get(timeout=5)["status"] == 4
        failing = setup.app.AsyncResult(failed.id)
        assert (failing.ready(), failing.successful(), failing.failed()) == (True, False, True)
        with pytest.raises(JobFailedError, match="card declined"):
            failing.get(timeout=5)
        assert failing.get(timeout=5, propagate=False)["status"] == 5
        with pytest.raises(JobFailedError):
            AsyncResult(failed.id, app=setup.app).get(timeout=5)
        stopped = setup.app.AsyncResult(aborted.id)
        assert (stopped.ready(), stopped.successful(), stopped.failed()) == (True, False, False)
        assert stopped.get(timeout=5)["status"] == 6
        # Other tasks are Celery's as ever.
        assert setup.app.tasks["plain_add"].delay(2, 3).get(timeout=WAIT) == 5
    # `celery result` prints the finished job (it waited forever before).
    shown = setup.run_celery("result", str(done.id), timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "'last_return_value': 'ok'" in shown.stdout
    queued = setup.ergate.submit_job("outcomes", initial_input_value="ok")  # no worker now
    waiting = setup.app.AsyncResult(queued.id)
    assert (waiting.state, waiting.ready()) == ("QUEUED", False)
    with pytest.raises(CeleryTimeoutError, match="still QUEUED"):
        waiting.get(timeout=0.3)
    with pytest.raises(CeleryTimeoutError, match="wait_for_job"):
        AsyncResult(queued.id, app=setup.app).get(timeout=0.3)


#: Run in a fresh process that only imported the app: the plain `AsyncResult` of a finished
#: job, in the main thread and in another, is ready and gets the job.
_FRESH_PROCESS = """
import sys, threading
import tests.apps.beat_app
from celery.result import AsyncResult

def check(job_id):
    result = AsyncResult(job_id)
    print(result.state, result.ready(), result.get(timeout=20)["status"])

check(sys.argv[1])
other = threading.Thread(target=check, args=(sys.argv[1],))
other.start()
other.join()
"""


@pytest.mark.setup("redis")  # django-db: the manage.py shell test of test_example_project
def test_plain_async_result_works_in_a_fresh_process_and_thread(setup: Setup, worker: Any) -> None:
    _register(setup)
    with worker():
        done = setup.ergate.submit_job("outcomes", initial_input_value="ok")
        setup.ergate.wait_for_job(done.id, timeout=WAIT)
    shown = setup.run_python("-c", _FRESH_PROCESS, str(done.id), timeout=60)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.splitlines() == ["COMPLETED True 4"] * 2, shown.stderr[-2000:]
