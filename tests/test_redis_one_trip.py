"""The Redis one-trip publish: a step message written by the job store's script is the message
kombu would send (compared field by field, for every routing option), its publish signals fire
and its `task-sent` event goes out; setups it cannot serve fall back to kombu, and say so."""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import pytest
from celery.signals import after_task_publish, before_task_publish
from kombu import Exchange, Queue

from ergate_celery import Job, JobStatus, Progress, ProgressReporter, Workflow
from ergate_celery.lifecycle.events import HandOver
from ergate_celery.operations.submission import new_job
from ergate_celery.stores.redis_publish import sending

from .support import Setup, in_process_worker

WAIT = 60
ONE_TRIP_LOGGER = "ergate_celery.stores.redis_publish"


def _workflow(name: str, **step_options: Any) -> Workflow:
    workflow = Workflow(unique_name=name)

    @workflow.step(**step_options)
    def first(value: int) -> int:
        return value + 1

    @workflow.step
    def second(value: int) -> int:
        return value * 10

    @workflow.step
    def third(value: int) -> int:
        return value + 2

    return workflow


#: Each routing option: the Celery settings, the first step's options, the job's priority.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], int | None]] = {
    "default queue": ({}, {}, None),
    "task_routes": ({"task_routes": {"ergate.diff.*": {"queue": "routed"}}}, {}, None),
    "the step's queue": ({}, {"queue": "step-queue"}, None),
    # The script slices its commands by byte length: a name whose bytes outnumber its letters.
    "a non-ASCII queue name": ({}, {"queue": "schritt-ü-队列"}, 3),
    "a direct exchange and routing key": (
        {
            "task_queues": [Queue("bound", Exchange("ex-direct", type="direct"), "rk")],
            "task_routes": {"ergate.diff.*": {"exchange": "ex-direct", "routing_key": "rk"}},
        },
        {},
        None,
    ),
    "priority": ({}, {}, 5),
    "priority_steps and sep": (
        {"broker_transport_options": {"priority_steps": list(range(10)), "sep": ":"}},
        {},
        7,
    ),
    "global_keyprefix": (
        {"broker_transport_options": {"global_keyprefix": "pfx:"}},
        {},
        9,
    ),
    # The whole job in the message: Celery computes argsrepr (cut at its size limit) and
    # kwargsrepr itself, over a long non-ASCII user context.
    "ergate_show_task_args": ({"ergate_show_task_args": True}, {}, None),
    "task_protocol 1": ({"task_protocol": 1}, {}, None),
    "task_protocol 1 with the job shown": (
        {"task_protocol": 1, "ergate_show_task_args": True},
        {},
        2,
    ),
    # A before_task_publish receiver that changes the headers (`_stamping` below).
    "a receiver that adds a header": ({}, {}, None),
}

#: A user context longer than Celery's argsrepr limit, its characters several bytes each.
CONTEXT = {"who": "ü队" * 700}


def _stamping(headers: Any = None, **kwargs: Any) -> None:
    headers["x-stamped"] = f"stamp for {headers['id']}"


def _landed(client: Any) -> dict[bytes, list[dict[str, Any]]]:
    """Every message in a Redis list of the database, by list key (the lists are emptied)."""
    found: dict[bytes, list[dict[str, Any]]] = {}
    for key in client.keys("*"):
        if client.type(key) == b"list":
            found[key] = [json.loads(raw) for raw in client.lrange(key, 0, -1)]
            client.delete(key)
    return found


def _comparable(landed: dict[bytes, list[dict[str, Any]]]) -> dict[bytes, list[dict[str, Any]]]:
    # A delivery tag is a new uuid for every publish: the one field left out.
    for messages in landed.values():
        for message in messages:
            assert message["properties"].pop("delivery_tag")
    return landed


@pytest.fixture
def publishes() -> Iterator[list[tuple[str, Any, Any]]]:
    """The publish signals as they fire: (signal, task id, where to)."""
    seen: list[tuple[str, Any, Any]] = []

    def task_id(headers: Any, body: Any) -> Any:
        return headers.get("id") or body["id"]  # task_protocol 1: the id is in the body

    def before(sender: Any = None, headers: Any = None, body: Any = None, **kwargs: Any) -> None:
        where = (kwargs["exchange"], kwargs["routing_key"])
        priority = kwargs["properties"].get("priority")
        seen.append(("before", task_id(headers, body), (where, priority)))

    def after(sender: Any = None, headers: Any = None, body: Any = None, **kwargs: Any) -> None:
        where = (kwargs["exchange"], kwargs["routing_key"])
        seen.append(("after", task_id(headers, body), where))

    before_task_publish.connect(before, weak=False)
    after_task_publish.connect(after, weak=False)
    yield seen
    before_task_publish.disconnect(before)
    after_task_publish.disconnect(after)


def _sent_events(pubsub: Any) -> list[tuple[bytes, dict[str, Any]]]:
    """The events published since the last call (at least one is awaited): (channel, event)
    with the fields of each send's own (its clock and time) left out."""
    events = []
    # Published before the publish returned: only a second one is not waited for long.
    while (message := pubsub.get_message(timeout=0.2 if events else 10.0)) is not None:
        envelope = json.loads(message["data"])
        event = json.loads(base64.b64decode(envelope["body"]))
        for field in ("clock", "timestamp", "utcoffset", "pid"):
            event.pop(field, None)
        envelope["properties"].pop("delivery_tag")
        envelope.pop("body")
        events.append((message["channel"], {**event, "envelope": envelope}))
    return events


@pytest.mark.parametrize("case", list(CASES))
def test_the_script_writes_the_message_kombu_would_send(
    case: str,
    make_setup: Callable[..., Setup],
    publishes: list[tuple[str, Any, Any]],
    request: pytest.FixtureRequest,
) -> None:
    conf, step_options, priority = CASES[case]
    if case == "a receiver that adds a header":
        before_task_publish.connect(_stamping, weak=False)
        request.addfinalizer(lambda: before_task_publish.disconnect(_stamping))
    setup = make_setup("redis", ergate_redis_one_trip=True, task_send_sent_event=True, **conf)
    ergate = setup.ergate
    ergate.register_workflow(_workflow("diff", **step_options))
    rt = ergate.runtime
    client = rt.store.client  # type: ignore[attr-defined]
    # Kombu declares what it publishes to; a worker would have: both paths find it there.
    with setup.app.connection_for_write() as connection:
        for queue in conf.get("task_queues", []):
            queue.bind(connection).declare()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    # Pub/sub is not per database: kombu names the database in its channels.
    db = client.connection_pool.connection_kwargs["db"]
    pubsub.psubscribe(f"*/{db}.celeryev*")
    pubsub.get_message(timeout=1.0)
    job = new_job(
        ergate.workflow("diff"),
        initial_input_value=1,
        user_context=CONTEXT,
        requested_start_time=None,
        job_id=None,
        now=rt.clock(),
        priority=priority,
    )

    # A submission: the create and the first message in one script, then kombu's publish of
    # the job as stored.
    send = rt.sending()
    assert send is not None
    with sending(send):
        stored = rt.store.create(job, unless_paused=True)
    assert send.carried(stored)
    by_script = _comparable(_landed(client))
    events_by_script = _sent_events(pubsub)
    ergate.publish(stored)
    by_kombu = _comparable(_landed(client))
    events_by_kombu = _sent_events(pubsub)
    assert by_script == by_kombu
    [[message]] = by_script.values()
    if case == "a receiver that adds a header":
        assert message["headers"]["x-stamped"] == f"stamp for ergate-step:{job.id}:0"
    if conf.get("task_protocol") != 1:
        shown = conf.get("ergate_show_task_args", False)
        assert ("redacted" in message["headers"]["argsrepr"]) is not shown
    assert [len(messages) for messages in by_script.values()] == [1]
    assert events_by_script == events_by_kombu
    assert len(events_by_script) == 1
    assert events_by_script[0][1]["type"] == "task-sent"
    assert events_by_script[0][1]["uuid"] == f"ergate-step:{job.id}:0"
    task_id = f"ergate-step:{job.id}:0"
    assert [seen[:2] for seen in publishes] == [("before", task_id), ("after", task_id)] * 2
    assert publishes[:2] == publishes[2:]

    # A compare-and-set that writes the job QUEUED (a hand-over) carries its message too.
    publishes.clear()
    rt.store.delete(str(job.id))
    rt.store.create(job.model_copy(update={"status": JobStatus.PENDING}))
    send = rt.sending()
    assert send is not None
    handed = rt.apply(str(job.id), HandOver(JobStatus.QUEUED), sender="test", send=send).after
    assert handed is not None
    assert send.carried(handed)
    by_script = _comparable(_landed(client))
    ergate.publish(handed)
    assert by_script == _comparable(_landed(client))
    assert [len(messages) for messages in by_script.values()] == [1]
    assert publishes[:2] == publishes[2:]
    assert len(publishes) == 4
    pubsub.close()


def test_a_job_runs_with_every_message_written_by_the_script(
    make_setup: Callable[..., Setup],
) -> None:
    setup = make_setup("redis", ergate_redis_one_trip=True)
    ergate = setup.ergate
    ergate.register_workflow(_workflow("trip"))
    published_by_kombu: list[Job] = []
    ergate.publish = published_by_kombu.append  # type: ignore[method-assign]
    with in_process_worker(setup.app):
        job = ergate.submit_job("trip", initial_input_value=1)
        done = ergate.wait_for_job(job.id, timeout=WAIT)
    assert (done.status, done.last_return_value) == (JobStatus.COMPLETED, 22)
    assert published_by_kombu == []


def test_a_step_that_wrote_progress_sends_its_successor_once(
    make_setup: Callable[..., Setup], publishes: list[tuple[str, Any, Any]]
) -> None:
    # Its outcome is written against the record its progress report wrote: the first write
    # goes through, and the publish signals fire once for the next step's message.
    setup = make_setup("redis", ergate_redis_one_trip=True, ergate_progress_interval=0.001)
    workflow = Workflow(unique_name="reporting")

    @workflow.step
    def halfway(value: int, progress: Annotated[ProgressReporter, Progress()]) -> int:
        progress.report(0.5)
        return value + 1

    @workflow.step
    def last(value: int) -> int:
        return value * 2

    setup.ergate.register_workflow(workflow)
    with in_process_worker(setup.app):
        job = setup.ergate.submit_job("reporting", initial_input_value=1)
        done = setup.ergate.wait_for_job(job.id, timeout=WAIT)
    assert (done.status, done.last_return_value) == (JobStatus.COMPLETED, 4)
    second = f"ergate-step:{job.id}:1"
    assert [kind for kind, task_id, _ in publishes if task_id == second] == ["before", "after"]


def _runs_through_kombu(setup: Setup, queue: str | None = None) -> list[str]:
    """Run a job on a worker; the ids of the jobs whose messages kombu published."""
    ergate = setup.ergate
    ergate.register_workflow(_workflow("fallback", **({"queue": queue} if queue else {})))
    published: list[str] = []
    kombu_publish = ergate.publish

    def publish(job: Job) -> None:
        published.append(str(job.id))
        kombu_publish(job)

    ergate.publish = publish  # type: ignore[method-assign]
    options = {"queues": [queue, setup.app.conf.task_default_queue]} if queue else {}
    with in_process_worker(setup.app, **options):
        job = ergate.submit_job("fallback", initial_input_value=1)
        done = ergate.wait_for_job(job.id, timeout=WAIT)
    assert (done.status, done.last_return_value) == (JobStatus.COMPLETED, 22)
    return published


def test_a_topic_exchange_route_falls_back_to_kombu(
    make_setup: Callable[..., Setup], caplog: pytest.LogCaptureFixture
) -> None:
    topic = Queue("topical", Exchange("ex-topic", type="topic"), routing_key="topical")
    setup = make_setup(
        "redis",
        ergate_redis_one_trip=True,
        task_queues=[topic, Queue("default-q")],
        task_default_queue="default-q",
    )
    caplog.set_level(logging.INFO, logger=ONE_TRIP_LOGGER)
    published = _runs_through_kombu(setup, queue="topical")
    # The first step goes through the topic exchange; the others to the default queue.
    assert len(published) == 1
    said = [r.getMessage() for r in caplog.records if r.name == ONE_TRIP_LOGGER]
    assert said == [
        "Step messages are published by kombu after the write: task ergate.fallback.first "
        "is routed through a topic exchange"
    ]


def test_a_rabbitmq_broker_falls_back_to_kombu(
    make_setup: Callable[..., Setup], rabbitmq_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    setup = make_setup("redis", ergate_redis_one_trip=True, broker_url=rabbitmq_service.url)
    caplog.set_level(logging.INFO, logger=ONE_TRIP_LOGGER)
    try:
        assert len(_runs_through_kombu(setup)) == 3
    finally:
        with setup.app.connection_for_write() as connection:
            connection.default_channel.queue_delete(setup.app.conf.task_default_queue)
    said = [r.getMessage() for r in caplog.records if r.name == ONE_TRIP_LOGGER]
    assert len(said) == 1
    assert "the broker is not Redis" in said[0]


def test_another_redis_database_or_the_setting_off_falls_back_to_kombu(
    make_setup: Callable[..., Setup], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ONE_TRIP_LOGGER)
    for enabled, other_database, reason in (
        (False, False, "ergate_redis_one_trip is off"),
        (True, True, "is not the result backend's"),
    ):
        caplog.clear()
        setup = make_setup("redis", ergate_redis_one_trip=enabled)
        if other_database:
            # The broker on another database of the same server: only asked, nothing sent.
            base, db = setup.conf["broker_url"].rsplit("/", 1)
            setup.app.conf.broker_url = f"{base}/{(int(db) + 1) % 16}"
        ergate = setup.ergate
        ergate.register_workflow(_workflow("elsewhere"))
        job = new_job(
            ergate.workflow("elsewhere"),
            initial_input_value=1,
            user_context=None,
            requested_start_time=None,
            job_id=None,
            now=ergate.runtime.clock(),
        )
        send = ergate.runtime.sending()
        assert send is not None
        assert send(job) is None
        assert send(job) is None
        said = [r.getMessage() for r in caplog.records if r.name == ONE_TRIP_LOGGER]
        assert len(said) == 1, said
        assert reason in said[0]


def test_after_task_publish_fires_only_for_a_message_the_script_wrote(
    make_setup: Callable[..., Setup], publishes: list[tuple[str, Any, Any]]
) -> None:
    # The message is built (before_task_publish) ahead of the script; a job stored parked or
    # an id already taken sends nothing, and Celery's "after the message was sent" must not
    # fire for it.
    setup = make_setup("redis", ergate_redis_one_trip=True)
    ergate = setup.ergate
    ergate.register_workflow(_workflow("gated"))
    client = ergate.runtime.store.client  # type: ignore[attr-defined]

    job = ergate.submit_job("gated", initial_input_value=1, id="gated-1")
    task_id = "ergate-step:gated-1:0"
    assert [seen[:2] for seen in publishes] == [("before", task_id), ("after", task_id)]
    assert sum(len(messages) for messages in _landed(client).values()) == 1

    publishes.clear()
    again = ergate.submit_job("gated", initial_input_value=1, id="gated-1", if_exists="return")
    assert again.id == job.id
    assert [kind for kind, _, _ in publishes] == ["before"]
    assert _landed(client) == {}

    publishes.clear()
    # Paused in the store only: this process's cache still says running, so the message is
    # built and the script parks the job instead.
    ergate.runtime.store.set_paused("gated", True)
    parked = ergate.submit_job("gated", initial_input_value=1, id="gated-2")
    assert parked.parked
    assert [kind for kind, _, _ in publishes] == ["before"]
    assert _landed(client) == {}


def test_messages_are_collected_on_kept_connections_and_a_forked_child_opens_its_own(
    make_setup: Callable[..., Setup],
) -> None:
    setup = make_setup("redis", ergate_redis_one_trip=True)
    ergate = setup.ergate
    ergate.register_workflow(_workflow("kept"))
    rt = ergate.runtime
    client = rt.store.client  # type: ignore[attr-defined]
    db = client.connection_pool.connection_kwargs["db"]
    job = new_job(
        ergate.workflow("kept"),
        initial_input_value=1,
        user_context=None,
        requested_start_time=None,
        job_id=None,
        now=rt.clock(),
    )
    assert rt.collect is not None

    # The broker connections of this app only, by name: other clients of the test process
    # (a worker of an earlier test winding down) may come and go on the same database.
    name = f"ergate-kept-{uuid.uuid4().hex[:8]}"
    options = dict(setup.app.conf.broker_transport_options or {})
    setup.app.conf.broker_transport_options = {**options, "client_name": name}

    def connections() -> int:
        return sum(
            1 for seen in client.client_list() if int(seen["db"]) == db and seen.get("name") == name
        )

    first = rt.collect(job)
    assert first is not None
    opened = connections()
    assert opened >= 1  # the collecting producer's connection carries the name
    for _ in range(20):
        assert rt.collect(job) is not None
    assert connections() == opened

    pid = os.fork()
    if pid == 0:  # the child: collects on a connection it opened, not its parent's
        status = 1
        try:
            before = connections()  # the store's client reconnects in a child too
            collected = rt.collect(job)
            status = 0 if collected is not None and connections() > before else 2
        finally:
            os._exit(status)
    assert os.waitpid(pid, 0)[1] == 0
    assert rt.collect(job) is not None
