"""The embedded broker as kombu sees it: delivery, wake-ups when a message lands (inotify, or
polling where that is off), and a prompt return to a worker that was asked to stop."""

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.worker import state
from kombu import Connection, Consumer, Exchange, Producer, Queue

from ergate_celery.embedded import folder_watch
from ergate_celery.embedded.broker import embedded_broker_settings

from .support import wait_until, watch_waits

#: Longer than any test: a consumer that waited this long for its next look would hang it.
NEVER = 3600.0

inotify_only = pytest.mark.skipif(
    folder_watch.watch_folder(os.getcwd(), ".msg") is None, reason="needs Linux's inotify"
)


@pytest.fixture
def queue() -> Queue:
    # A name of each test's own: kombu keeps exchange bindings per process, across folders.
    name = f"q-{uuid.uuid4().hex[:8]}"
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def _connect(folder: Path, **options: Any) -> Connection:
    """A kombu connection to the embedded broker in `folder`, as Celery would open it."""
    settings = embedded_broker_settings(folder, **options)
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


def _inotify_descriptors() -> int:
    return sum(
        os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    )


def _drain_until(connection: Connection, received: list[Any], count: int) -> threading.Thread:
    """Drain in a thread of its own, without a timeout, until `count` messages came."""

    def drain() -> None:
        while len(received) < count:
            connection.drain_events()

    thread = threading.Thread(target=drain, daemon=True)  # a hung drain must not hang pytest
    thread.start()
    return thread


def _publish_and_drain(
    connection: Connection, queue: Queue, folder: Path, received: list[Any]
) -> None:
    """Consume on `connection` in a thread while another connection publishes a message."""
    _consume(connection, queue, received)
    thread = _drain_until(connection, received, 1)
    with _connect(folder) as publisher:
        _publish(publisher, queue, {"polled": True})
    wait_until(lambda: received, what="the polled message")
    thread.join(60)


PUBLISHER = """
import sys
from kombu import Connection, Exchange, Producer, Queue
from ergate_celery.embedded.broker import embedded_broker_settings
folder, name = sys.argv[1], sys.argv[2]
settings = embedded_broker_settings(folder)
queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
with Connection(settings["broker_url"], transport=settings["broker_transport"],
                transport_options=settings["broker_transport_options"]) as connection:
    Producer(connection.channel(), exchange=queue.exchange).publish(
        {"from": "another process"}, routing_key=name, serializer="json", declare=[queue])
"""


@inotify_only
def test_a_message_from_another_process_wakes_the_consumer_at_once(
    tmp_path: Path, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer's next look at the folder is an hour away: only the message's landing,
    seen through inotify, can bring it in before the wait below gives up."""
    waiting = watch_waits(monkeypatch)
    received: list[Any] = []
    with _connect(tmp_path / "broker", polling_interval=NEVER) as connection:
        _consume(connection, queue, received)
        thread = _drain_until(connection, received, 1)
        assert waiting.wait(60), "the consumer never started waiting"
        subprocess.run(
            [sys.executable, "-c", PUBLISHER, str(tmp_path / "broker"), queue.name],
            check=True,
            timeout=120,
        )
        wait_until(lambda: received, what="the message from the other process")
        thread.join(60)
    assert received == [{"from": "another process"}]


@inotify_only
def test_a_freed_prefetch_slot_wakes_the_consumer(
    tmp_path: Path, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message that landed while the consumer held all it may is taken as soon as one is
    acknowledged, not at the next look at the folder (an hour away)."""
    waiting = watch_waits(monkeypatch)
    with _connect(tmp_path / "broker", polling_interval=NEVER) as connection:
        held: list[Any] = []
        channel: Any = connection.channel()
        channel.basic_qos(0, 1, False)
        consumer = Consumer(channel, [queue], accept=["json"])
        consumer.register_callback(lambda body, message: held.append((body, message)))
        consumer.consume()
        _publish(connection, queue, {"n": 1}, {"n": 2})
        connection.drain_events(timeout=60)
        assert len(held) == 1
        waiting.clear()
        thread = _drain_until(connection, held, 2)
        assert waiting.wait(60), "the consumer never started waiting"
        held[0][1].ack()
        wait_until(lambda: len(held) == 2, what="the second message")
        thread.join(60)
    # FIFO holds to the millisecond only: either may come first.
    assert sorted(body["n"] for body, _ in held) == [1, 2]


@inotify_only
def test_a_worker_asked_to_stop_leaves_its_wait_for_a_landing(
    connection: Connection, queue: Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting = watch_waits(monkeypatch)
    with _connect(tmp_path / "quiet", polling_interval=NEVER) as quiet:
        _consume(quiet, queue, [])
        outcome: list[BaseException] = []

        def drain() -> None:
            try:
                quiet.drain_events(timeout=NEVER)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=drain, daemon=True)
        thread.start()
        assert waiting.wait(60), "the consumer never started waiting"
        monkeypatch.setattr(state, "should_stop", 0)
        thread.join(60)
    assert [type(exc) for exc in outcome] == [TimeoutError]


def test_without_the_watch_the_consumer_polls(tmp_path: Path, queue: Queue) -> None:
    before = _inotify_descriptors()
    received: list[Any] = []
    with _connect(tmp_path / "broker", polling_interval=0.05, watch=False) as connection:
        _publish_and_drain(connection, queue, tmp_path / "broker", received)
        assert _inotify_descriptors() == before  # it never watched
    assert received == [{"polled": True}]


@inotify_only
def test_closed_connections_leave_no_watch_open(tmp_path: Path, queue: Queue) -> None:
    before = _inotify_descriptors()
    for _ in range(5):
        with _connect(tmp_path / "broker") as connection:
            _consume(connection, queue, [])
            with pytest.raises(TimeoutError):
                connection.drain_events(timeout=0.01)
            assert _inotify_descriptors() == before + 1
    assert _inotify_descriptors() == before


@inotify_only
def test_a_forked_child_watches_with_descriptors_of_its_own(tmp_path: Path, queue: Queue) -> None:
    """A prefork child inherits its parent's connection; should it drain, it must not read
    the parent's watch (each would steal the other's wake-ups)."""
    with _connect(tmp_path / "broker") as connection:
        _consume(connection, queue, [])
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=0.01)
        transport: Any = connection.transport
        parent_watch = transport._watch
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report whether it made a watch of its own, then leave
            try:
                with pytest.raises(TimeoutError):
                    connection.drain_events(timeout=0.01)
                own = transport._watch
                os.write(write, b"1" if own is not None and own is not parent_watch else b"0")
            finally:
                os._exit(0)
        os.close(write)
        answer = os.read(read, 1)
        os.close(read)
        os.waitpid(pid, 0)
        assert transport._watch is parent_watch
    assert answer == b"1"


def test_where_inotify_is_missing_the_consumer_polls(
    tmp_path: Path, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another system, or this user's inotify instances used up: `watch_folder` has none."""
    from ergate_celery.embedded import broker as embedded_broker

    monkeypatch.setattr(embedded_broker, "watch_folder", lambda folder, suffix: None)
    received: list[Any] = []
    with _connect(tmp_path / "broker", polling_interval=0.05) as connection:
        _publish_and_drain(connection, queue, tmp_path / "broker", received)
    assert received == [{"polled": True}]


@inotify_only
def test_a_folder_that_cannot_be_watched_gives_no_watch_and_keeps_no_descriptor(
    tmp_path: Path,
) -> None:
    before = _inotify_descriptors()
    assert folder_watch.watch_folder(str(tmp_path / "absent"), ".msg") is None
    assert _inotify_descriptors() == before
