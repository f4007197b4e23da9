"""A step message written by the job store's own script, when the broker is the result
backend's Redis: the record's write and the message are then one round trip, atomic.

The message is the one Celery and kombu would send: `apply_async` runs as usual (routing,
`create_task_message`, `before_task_publish`/`after_task_publish`, the `task-sent` event), on a
producer whose publishes are collected instead of sent, through kombu's own publish-batch hook
(the Redis channel's `_put` and `_put_fanout` hand it their final commands: the queue key with
its priority suffix, the envelope as kombu encodes it). The store's script runs those commands
only when its write succeeds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from celery.app.routes import MapRoute
from kombu import Producer

from ergate_celery.model.job import Job
from ergate_celery.stores.after_publish import Held, holding, release

logger = logging.getLogger(__name__)

#: Gives the Redis commands (encoded for the script) of the message to send with the write of a
#: job, or None for none; see `sending`.
Send = Callable[[Job], bytes | None]

#: Commands a Redis channel may hand a publish batch: a queue's list, its expiry, a fanout.
COMMANDS = frozenset({"lpush", "pexpire", "publish"})

_send: ContextVar[Send | None] = ContextVar("ergate_redis_send", default=None)


@contextmanager
def sending(send: Send | None) -> Iterator[None]:
    """Writes of the Redis store inside this block carry the message `send` gives for the
    job written (a job it gives None for is written alone)."""
    token = _send.set(send)
    try:
        yield
    finally:
        _send.reset(token)


def message_for(job: Job) -> bytes:
    """The script argument of the message to write with `job` (b'' for none)."""
    send = _send.get()
    return (send(job) or b"") if send is not None else b""


@dataclass
class Collected:
    """A step message collected for the store's script."""

    #: The script argument: the Redis commands kombu would have run (`_Collector.encoded`).
    commands: bytes
    #: Celery's `after_task_publish` for it, sent by `sent` once the script wrote it.
    after: Held

    def sent(self) -> None:
        """The script wrote the message: Celery's `after_task_publish` goes now (once)."""
        release(self.after)


class _Collector:
    """Stands for kombu's Redis `PublishBatch`: the channel adds each publish's commands."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.fields: list[bytes] = []

    def add(self, name: str, key: Any, *args: Any) -> None:
        if name not in COMMANDS or len(args) != 1:
            # Not a command a Redis channel's publish gives (a newer kombu?): kombu publishes.
            raise ValueError(f"kombu asked for {name!r}, which the store's script does not run")
        # The channel's client would put `global_keyprefix` before the key of each of these.
        for field in (name.upper(), self.prefix + str(key), str(args[0])):
            encoded = field.encode()
            self.fields.append(b"%d:%s" % (len(encoded), encoded))

    def encoded(self) -> bytes:
        """The script argument: name, key and value of each command, each field as
        `<byte length>:<bytes>` (the script slices them out; no JSON to decode)."""
        return b"".join(self.fields)


class _Collecting:
    """A producer's publish batch (kombu's `_ProducerBatchState` protocol) that collects."""

    def __init__(self, collector: _Collector) -> None:
        self.collector = collector

    def publish(self, channel: Any, message: Any, **kwargs: Any) -> Any:
        return channel.basic_publish(message, _publish_batch=self.collector, **kwargs)


def redis_params(client: Any) -> tuple[Any, ...]:
    """Where a redis-py client connects: host, port, unix socket and db."""
    params = client.connection_pool.connection_kwargs
    return (params.get("host"), params.get("port"), params.get("path"), params.get("db", 0))


#: The `apply_async` options that choose a message's exchange (with the task's name).
DESTINATION = ("queue", "exchange", "exchange_type")


def _route_key(name: str, options: dict[str, Any], router: Any) -> tuple[Any, ...] | None:
    """What the router's choice of exchange depends on, or None when it may depend on more:
    a `task_routes` function is given the message's arguments."""
    if not all(isinstance(route, MapRoute) for route in router.routes):
        return None
    key = (name, *(options.get(option) for option in DESTINATION))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _exchange_type(route: dict[str, Any]) -> str | None:
    """The type of the exchange a route of Celery's router sends to (None: the default)."""
    queue = route.get("queue")
    kind: str | None = route.get("exchange_type")
    exchange = route.get("exchange")
    if kind is None and exchange is not None and not isinstance(exchange, str):
        kind = exchange.type
    if kind is None and queue is not None and not isinstance(queue, str):
        kind = queue.exchange.type
    return kind


def _cached_declare(producer: Any) -> Callable[..., Any]:
    """The producer's `maybe_declare`, answering from the connection's declared-entity cache
    first: kombu binds a copy of the entity to the channel before it looks there (a queue, its
    exchange and bindings copied for every message), and throws the copy away when it finds
    the entity declared. What it declares, and when, is kombu's as before."""
    kombu_maybe_declare = producer.maybe_declare

    def maybe_declare(entity: Any, retry: bool = False, **retry_policy: Any) -> Any:
        connection = producer.channel.connection
        if (
            entity
            and connection
            and entity.can_cache_declaration
            and hash(entity) in connection.client.declared_entities
        ):
            return False
        return kombu_maybe_declare(entity, retry, **retry_policy)

    return maybe_declare


class RedisPublisher:
    """Collects the commands of step messages for one app, when its broker is the Redis of
    its result backend; why not is logged once (INFO)."""

    def __init__(self, app: Any, backend_client: Any, enabled: bool) -> None:
        self.app = app
        self._backend_client = backend_client
        self._enabled = enabled
        self._usable: bool | None = None
        self._logged: set[str] = set()
        # Whether each (task, destination options) routes directly, for the router it was
        # decided with: apply_async routes the message again, so this routes only once.
        self._router: Any = None
        self._directs: dict[tuple[Any, ...], bool] = {}
        self._idle: list[Any] = []
        self._pid = os.getpid()

    def _once(self, reason: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            logger.info("Step messages are published by kombu after the write: %s", reason)

    @property
    def usable(self) -> bool:
        """Whether the broker is the backend's Redis (and the setting allows it)."""
        if self._usable is None:
            self._usable = self._check()
        return self._usable

    def _check(self) -> bool:
        if not self._enabled:
            self._once("ergate_redis_one_trip is off")
            return False
        with self.app.producer_or_acquire() as producer:
            channel = producer.channel
            if getattr(channel, "create_publish_batch", None) is None or not hasattr(
                channel, "client"
            ):
                self._once(f"the broker is not Redis ({producer.connection.transport_cls})")
                return False
            broker = redis_params(channel.client)
        backend = redis_params(self._backend_client)
        if broker[0] is None and broker[2] is None:  # a pool that picks its server (Sentinel)
            self._once("the broker's Redis server is not known before connecting")
            return False
        if broker != backend:
            self._once(f"the broker's Redis {broker} is not the result backend's {backend}")
            return False
        return True

    def direct(self, task: Any, args: tuple[Any, ...], options: dict[str, Any]) -> bool:
        """Whether Celery routes this message to queues by name (a direct exchange, or none):
        a topic or fanout exchange is left to kombu."""
        if self.app.conf.task_always_eager:  # apply_async would run the task, not publish
            return False
        merged = dict(task._get_exec_options(), **options)
        router = self.app.amqp.router
        key = _route_key(task.name, merged, router)
        if key is not None and router is self._router:
            known = self._directs.get(key)
            if known is not None:
                return known
        kind = _exchange_type(router.route(merged, task.name, args, {}, None))
        is_direct = kind in (None, "direct")
        if key is not None:
            if router is not self._router:
                self._router, self._directs = router, {}
            self._directs[key] = is_direct
        if not is_direct:
            self._once(f"task {task.name} is routed through a {kind} exchange")
        return is_direct

    def _producer(self) -> Any:
        """An idle collecting producer, each on a broker connection of its own, kept between
        messages: kombu's pool hands a producer out with its channel gone, and binds a copy
        of its exchange to a new channel for every message. There are as many as messages
        were ever collected at once (collecting sends nothing but a queue's first
        declaration, so a green thread holds one only briefly)."""
        if self._pid != os.getpid():  # a forked child: its parent's connections are not its own
            self._pid, self._idle = os.getpid(), []
        try:
            return self._idle.pop()
        except IndexError:
            producer = Producer(self.app.connection_for_write())
            producer.maybe_declare = _cached_declare(producer)  # type: ignore[method-assign]
            return producer

    def collect(self, task_name: str, send: Callable[[Any], None]) -> Collected | None:
        """What `send(producer)` publishes (an `apply_async` of `task_name` given the
        producer): the Redis commands kombu would have run, and the `after_task_publish`
        sends held back for them; None when they went to no queue."""
        producer = self._producer()
        collector = _Collector(getattr(producer.channel, "global_keyprefix", "") or "")
        batches = producer._batch_local
        batches.current = _Collecting(collector)
        try:
            with holding(task_name) as held:
                send(producer)
        except BaseException:
            producer.connection.release()  # it may be broken: not kept
            raise
        finally:
            del batches.current
        self._idle.append(producer)
        if not collector.fields:
            release(held)  # nothing collected: whatever was published was published by kombu
            return None
        return Collected(collector.encoded(), held)
