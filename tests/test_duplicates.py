"""A step message delivered twice never forks the job."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.result import AsyncResult
from celery.signals import before_task_publish

from ergate_celery import JobStatus
from ergate_celery.stores.base import job_document
from ergate_celery.worker.step_message import step_message

from .faults import WAIT
from .support import Setup
from .workflows import counting_workflow


@contextmanager
def _captured_messages(prefix: str) -> Iterator[dict[str, list[Any]]]:
    """The job documents published for tasks named `<prefix>...`, by task name."""
    messages: dict[str, list[Any]] = {}

    def capture(sender: str | None = None, body: Any = None, **kwargs: Any) -> None:
        if sender and sender.startswith(prefix):
            messages.setdefault(sender, []).append(body[0][0])

    before_task_publish.connect(capture, weak=False)
    try:
        yield messages
    finally:
        before_task_publish.disconnect(capture)


def test_duplicate_message_does_not_fork(setup: Setup, worker: Any) -> None:
    runs: Counter[str] = Counter()
    setup.ergate.register_workflow(counting_workflow("dup", runs))
    with _captured_messages("ergate.dup.") as messages, worker():
        job = setup.ergate.submit_job("dup", initial_input_value=5)
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
        assert done.status is JobStatus.COMPLETED
        before = job_document(setup.ergate.get_job(str(job.id)))
        first, second = messages["ergate.dup.a"][0], messages["ergate.dup.b"][0]
        assert first == step_message(job)  # the message names the job's place, no more
        resent = [("ergate.dup.a", first), ("ergate.dup.a", first), ("ergate.dup.b", second)]
        task_ids = []
        for name, payload in resent:
            task_ids.append(f"dup-{uuid.uuid4()}")
            setup.app.send_task(name, args=[payload], task_id=task_ids[-1])
        summaries = [AsyncResult(i, app=setup.app).get(timeout=WAIT) for i in task_ids]
    assert [s.get("dropped") for s in summaries] == [True, True, True]
    assert runs == {"a": 1, "b": 1, "c": 1}
    assert done.last_return_value == (5 + 1) * 2 - 1
    assert job_document(setup.ergate.get_job(str(job.id))) == before
    assert AsyncResult(str(job.id), app=setup.app).state == "COMPLETED"


def test_duplicate_delivered_while_step_runs_does_not_fork(setup: Setup, worker: Any) -> None:
    """Both copies of the first step's message wait in the queue before the worker (two
    threads) starts: the second finds the step claimed and leased, and is dropped."""
    runs: Counter[str] = Counter()
    setup.ergate.register_workflow(counting_workflow("dup_live", runs, first_sleep=0.5))
    job = setup.ergate.submit_job("dup_live", initial_input_value=5)
    duplicate = f"dup-{uuid.uuid4()}"
    setup.app.send_task("ergate.dup_live.a", args=[job_document(job)], task_id=duplicate)
    with worker():
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
        AsyncResult(duplicate, app=setup.app).get(timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert done.last_return_value == (5 + 1) * 2 - 1
    assert (done.steps_completed, done.percent_completed) == (3, 100.0)
    assert runs["a"] == 1
    assert (runs["b"], runs["c"]) == (1, 1)
