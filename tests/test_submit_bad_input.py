"""Every wrong submission raises a clear error, and nothing is stored and nothing published."""

from datetime import date
from typing import Any

import pytest

from ergate_celery import (
    DuplicateJobError,
    InvalidDefinitionError,
    InvalidInputError,
    JobNotFoundError,
    JobStatus,
    UnknownWorkflowError,
    Workflow,
    cancel_job,
    get_job,
    submit_job,
)

from .support import Setup


def _register(setup: Setup) -> Workflow:
    workflow = Workflow(unique_name="typed")

    @workflow.step
    def first(quantity: int) -> int:
        return quantity

    setup.ergate.register_workflow(workflow)
    return workflow


def _published(setup: Setup) -> int:
    queue = setup.app.conf.task_default_queue
    with setup.app.connection_for_write() as conn:
        channel = conn.default_channel
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except Exception:  # the queue was never declared: nothing was published to it
            return 0


def _stored_ids(setup: Setup) -> set[str]:
    store: Any = setup.ergate.store
    if setup.name == "redis":
        keys = store.client.keys("celery-task-meta-*")
        return {k.decode().removeprefix("celery-task-meta-") for k in keys}
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        return {row[0] for row in conn.execute(sa.select(store.table.c.task_id))}


BAD_SUBMISSIONS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    (
        "unknown workflow",
        {"workflow_name": "nope"},
        UnknownWorkflowError,
        r"'nope'.*registered: .*typed",
    ),
    ("workflow name not a string", {"workflow_name": 42}, TypeError, "string"),
    ("input not JSON", {"initial_input_value": object()}, InvalidInputError, "JSON"),
    ("context not JSON", {"user_context": {"x": object()}}, InvalidInputError, "user_context"),
    (
        "context a date",
        {"user_context": {"when": date(2030, 1, 2)}},
        InvalidInputError,
        r"user_context\['when'\]: date is not JSON",
    ),
    ("input of the wrong type", {"initial_input_value": "many"}, InvalidInputError, "int"),
    ("input list for int", {"initial_input_value": [1]}, InvalidInputError, "input type"),
    ("id not a string", {"id": 7}, InvalidInputError, "must be a string"),
    ("id empty", {"id": ""}, InvalidInputError, "1 to 100"),
    ("id too long", {"id": "x" * 101}, InvalidInputError, "1 to 100"),
    ("id with a space", {"id": "a b"}, InvalidInputError, "without spaces"),
    ("start time a string", {"requested_start_time": "soon"}, InvalidInputError, "datetime"),
    ("start time a date", {"requested_start_time": date(2030, 1, 1)}, InvalidInputError, "date"),
    (
        "oversized input",
        {"initial_input_value": 1, "user_context": "x" * 2_000_000},
        InvalidInputError,
        "ergate_max_payload_bytes",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [case[1:] for case in BAD_SUBMISSIONS],
    ids=[case[0] for case in BAD_SUBMISSIONS],
)
def test_bad_submission_stores_and_publishes_nothing(
    setup: Setup, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    _register(setup)
    arguments: dict[str, Any] = {"workflow_name": "typed", "initial_input_value": 3, **kwargs}
    name = arguments.pop("workflow_name")
    with pytest.raises(error, match=match):
        submit_job(name, **arguments)
    assert _stored_ids(setup) == set()
    assert _published(setup) == 0


def test_duplicate_id_leaves_the_existing_job_untouched(setup: Setup) -> None:
    _register(setup)
    first = submit_job("typed", initial_input_value=1, id="order-17")
    with pytest.raises(DuplicateJobError, match="order-17"):
        submit_job("typed", initial_input_value=2, id="order-17")
    assert get_job("order-17") == first
    assert _published(setup) == 1


def test_valid_submission_is_stored_as_json_and_published_once(setup: Setup) -> None:
    _register(setup)
    job = submit_job("typed", initial_input_value="5", user_context={"when": "2030-01-02"})
    # Lax validation accepts "5" for int; values are kept as given (a date would be refused:
    # JSON would hand it back a string).
    assert job.initial_input_value == "5"
    assert job.user_context == {"when": "2030-01-02"}
    assert job.status is JobStatus.QUEUED
    assert get_job(job.id) == job
    assert _stored_ids(setup) == {job.id}
    assert _published(setup) == 1


@pytest.mark.setup("redis")
def test_reading_and_cancelling_unknown_jobs(setup: Setup) -> None:
    with pytest.raises(JobNotFoundError, match="missing"):
        get_job("missing")
    with pytest.raises(JobNotFoundError, match="missing"):
        cancel_job("missing")
    with pytest.raises(TypeError, match="string"):
        get_job(12)  # type: ignore[arg-type]


@pytest.mark.setup("redis")
def test_register_rejects_non_workflows_and_name_clashes(setup: Setup) -> None:
    with pytest.raises(TypeError, match="Workflow"):
        setup.ergate.register_workflow("typed")  # type: ignore[arg-type]
    workflow = _register(setup)
    setup.ergate.register_workflow(workflow)  # the same object again is fine
    with pytest.raises(InvalidDefinitionError, match="already registered"):
        _register(setup)
