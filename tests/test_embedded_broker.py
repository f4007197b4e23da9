"""The embedded broker as kombu sees it: delivery, and a prompt return to a worker that was
asked to stop."""

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.worker import state
from kombu import Connection, Consumer, Exchange, Producer, Queue

from ergate_celery.embedded_broker import embedded_broker_settings


@pytest.fixture
def queue() -> Queue:
    # A name of each test's own: kombu keeps exchange bindings per process, across folders.
    name = f"q-{uuid.uuid4().hex[:8]}"
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def _connect(folder: Path) -> Connection:
    """A kombu connection to the embedded broker in `folder`, as Celery would open it."""
    settings = embedded_broker_settings(folder)
    return Connection(
        settings["broker_url"],
        transport=settings["broker_transport"],
        transport_options=settings["broker_transport_options"],
    )


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[Connection]:
    with _connect(tmp_path / "broker") as opened:
        yield opened


def _consume(connection: Connection, queue: Queue, received: list[Any]) -> Consumer:
    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        message.ack()

    consumer = Consumer(connection.channel(), [queue], callbacks=[on_message], accept=["json"])
    consumer.consume()
    return consumer


def _publish(connection: Connection, queue: Queue, *bodies: Any) -> None:
    producer = Producer(connection.channel(), exchange=queue.exchange)
    for body in bodies:
        producer.publish(body, routing_key=queue.routing_key, serializer="json", declare=[queue])


def test_every_message_comes_whole(connection: Connection, queue: Queue) -> None:
    received: list[Any] = []
    _consume(connection, queue, received)
    bodies = [{"n": n, "pad": "x" * 10_000} for n in range(20)]
    _publish(connection, queue, *bodies)
    while len(received) < len(bodies):
        connection.drain_events(timeout=10)
    # FIFO holds to the millisecond only: messages stamped in the same one come in any order.
    assert sorted(received, key=lambda body: body["n"]) == bodies


def test_drain_waits_its_whole_timeout_when_nothing_comes(
    connection: Connection, queue: Queue
) -> None:
    _consume(connection, queue, [])
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        connection.drain_events(timeout=0.3)
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("flag", ["should_stop", "should_terminate"])
def test_drain_returns_at_once_to_a_worker_asked_to_stop(
    connection: Connection, queue: Queue, monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    # Celery's worker loop reads these flags only between drains; a drain of its full 2 s
    # cycle would hold a stopping worker for up to two cycles.
    _consume(connection, queue, [])
    monkeypatch.setattr(state, flag, 0)  # what celery.contrib.testing.worker sets to stop
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        connection.drain_events(timeout=60)
    assert time.monotonic() - started < 60


def test_a_pending_message_is_delivered_even_to_a_stopping_worker(
    connection: Connection, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[Any] = []
    _consume(connection, queue, received)
    _publish(connection, queue, {"last": True})
    monkeypatch.setattr(state, "should_stop", 0)
    connection.drain_events(timeout=10)
    assert received == [{"last": True}]


def test_without_a_timeout_drain_blocks_until_a_message_comes(
    connection: Connection, queue: Queue, tmp_path: Path
) -> None:
    received: list[Any] = []
    _consume(connection, queue, received)
    with _connect(tmp_path / "broker") as publisher:
        later = threading.Timer(0.3, _publish, (publisher, queue, {"late": True}))
        later.start()
        connection.drain_events()  # no timeout: returns only with the message
        later.join()
    assert received == [{"late": True}]


def test_a_new_exchange_table_is_never_read_half_written(tmp_path: Path) -> None:
    """Fanout publishers read an exchange's table while receivers create it (Celery events:
    a dispatcher sends while a receiver binds); kombu's own create left it empty a moment."""
    folder = tmp_path / "broker"
    errors: list[BaseException] = []
    with _connect(folder) as reader_connection:
        reader = reader_connection.channel()
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                for n in range(20):
                    try:
                        reader.get_table(f"fan-{n}")
                    except BaseException as exc:
                        errors.append(exc)

        thread = threading.Thread(target=read)
        thread.start()
        try:
            with _connect(folder) as binder_connection:
                binder = binder_connection.channel()
                for n in range(20):
                    binder._queue_bind(f"fan-{n}", "", "", f"queue-{n}")
        finally:
            stop.set()
            thread.join(10)
        tables = [reader.get_table(f"fan-{n}") for n in range(20)]
    assert errors == []
    assert [[entry.queue for entry in table] for table in tables] == [
        [f"queue-{n}"] for n in range(20)
    ]
