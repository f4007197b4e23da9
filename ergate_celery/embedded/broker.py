"""Server-less Celery broker for tests and demos, built on kombu's filesystem transport.

Select it with ``app.conf.update(embedded_broker_settings(folder))``; every process
(publisher, ``celery worker``, event receiver) pointed at the same folder shares the broker.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

from ergate_celery.embedded.folder_watch import FolderWatch, watch_folder

__all__ = ["TRANSPORT_PATH", "Channel", "Transport", "embedded_broker_settings"]

#: Import path kombu resolves when given as ``broker_transport`` (no kombu globals touched).
TRANSPORT_PATH = "ergate_celery.embedded.broker:Transport"


class Channel(filesystem.Channel):
    """Filesystem channel that publishes every message with an atomic rename."""

    # kombu's own base classes disagree on this parameter's name (message vs
    # payload) and only ever pass it positionally; we follow the direct parent.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Write ``payload`` for ``queue`` so it appears complete or not at all."""
        folder = os.fspath(self.data_folder_out)
        # Consumers claim any "<stamp>_<id>.<queue>.msg" entry the moment it is
        # listed and read it without locking, so that name may only ever point
        # at a fully written file; the stamp keeps the reader's sort FIFO.
        final = os.path.join(
            folder, f"{time.monotonic_ns() // 1_000_000}_{uuid.uuid4()}.{queue}.msg"
        )
        # Same directory, so os.replace is a rename on one filesystem (atomic);
        # the leading dot and ".tmp" suffix never match a reader's "<queue>.msg".
        staging = os.path.join(folder, f".{uuid.uuid4().hex}.tmp")
        try:
            with open(staging, "xb") as fh:
                fh.write(dumps(payload).encode("utf-8"))
            os.replace(staging, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(staging)
            raise ChannelError(f"Cannot add message to {folder!r}") from exc

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        """Acknowledge; a drain waiting for a free prefetch slot is woken to take the next
        message (files that landed while it was full gave it no signal it could use)."""
        full = not self.qos.can_consume()
        super().basic_ack(delivery_tag, multiple)
        if full:
            self._wake_drain()

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        """Reject; as `basic_ack`, a drain waiting for a free prefetch slot is woken."""
        full = not self.qos.can_consume()
        super().basic_reject(delivery_tag, requeue)
        if full:
            self._wake_drain()

    def _wake_drain(self) -> None:
        transport: Any = self.connection  # kombu's virtual channels call their transport so
        if transport is not None:
            transport.wake()

    def _queue_bind(
        self, exchange: str, routing_key: str | None, pattern: str | None, queue: str | None
    ) -> None:
        """Create a new exchange table whole: kombu creates the file empty, then locks and
        writes it, and a publisher reading it in between (an event sent while a receiver
        binds) fails on the empty file."""
        table = Path(self.control_folder) / f"{exchange}.exchange"
        if not table.exists():
            table.parent.mkdir(exist_ok=True)
            entry = [(routing_key or "", pattern or "", queue or "")]
            staging = table.with_name(f".{uuid.uuid4().hex}.tmp")
            staging.write_bytes(dumps(entry).encode("utf-8"))
            try:
                os.link(staging, table)  # create-if-absent, never seen half written
                return
            except FileExistsError:
                pass  # created meanwhile: add the entry to it as kombu does
            finally:
                staging.unlink()
        super()._queue_bind(exchange, routing_key or "", pattern, queue or "")


class Transport(filesystem.Transport):
    """kombu filesystem transport whose channels write messages atomically, whose consumer
    wakes when a message file lands (inotify; polling where that is not available), and
    whose worker stops within one poll instead of within two of its 2 s drain cycles."""

    Channel = Channel

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        options = client.transport_options
        # Only a folder of the consumer's messages is worth watching (kombu's default is not).
        folder = options.get("data_folder_in") if options.get("watch_folder", True) else None
        self._watched = None if folder is None else os.fspath(folder)
        self._watch: FolderWatch | None = None
        self._watch_pid = 0

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> None:
        """Deliver one message; `TimeoutError` after `timeout` s, or as soon as this process's
        worker has been asked to stop (its loop only looks at the stop flag between two
        drains). Between two looks at the queue folder it waits for a message file to land
        there, at most `polling_interval` s (the whole wait where nothing can tell it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cycle = self.cycle
        assert cycle is not None  # made with the transport
        watch = self._current_watch()  # before the first look: nothing lands unseen
        while True:
            try:
                cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or _worker_stopping():
                    raise TimeoutError  # what kombu's drain raises (socket.timeout)
            if watch is not None and not watch.broken:
                self._await_landing(watch, deadline)
            elif self.polling_interval:
                time.sleep(
                    self.polling_interval if deadline is None else min(self.polling_interval, left)
                )

    def _await_landing(self, watch: FolderWatch, deadline: float | None) -> None:
        """Return when a message may have come, `polling_interval` s at most (never-ending
        without one), or past `deadline`; with a deadline it also returns soon after the
        worker is asked to stop, which only a look at the flags can tell."""
        now = time.monotonic()
        until = deadline
        if self.polling_interval:
            rescan = now + self.polling_interval
            until = rescan if until is None else min(until, rescan)
        while until is None or now < until:
            wait = _FOREVER if until is None else until - now
            if deadline is not None:
                wait = min(wait, _STOP_LOOK)
            if watch.wait(wait) or (deadline is not None and _worker_stopping()):
                return
            now = time.monotonic()

    def wake(self) -> None:
        """End this connection's current wait for a message (a prefetch slot came free)."""
        watch = self._watch
        if watch is not None and self._watch_pid == os.getpid():
            watch.poke()

    def _current_watch(self) -> FolderWatch | None:
        if self._watched is None:
            return None
        if self._watch_pid != os.getpid():
            # Made before a fork: the parent's (both descriptors are this copy's to close).
            self._close_watch()
            self._watch_pid = os.getpid()
            self._watch = watch_folder(self._watched, ".msg")
        elif self._watch is not None and self._watch.broken:
            self._close_watch()  # the folder went away: polling from now on
        return self._watch

    def _close_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()

    def close_connection(self, connection: Any) -> None:
        """Close the channels, and the folder watch with its descriptors."""
        try:
            super().close_connection(connection)
        finally:
            self._close_watch()


#: How long a drain with a timeout goes without looking at the worker's stop flags (s).
_STOP_LOOK = 0.05
#: A wait without end, in slices that poll() takes.
_FOREVER = 3600.0


def _worker_stopping() -> bool:
    # Celery's own test for these flags: 0 (a plain stop) counts, None and False do not.
    return any(flag is not None and flag is not False for flag in _stop_flags())


def _stop_flags() -> tuple[Any, Any]:
    from celery.worker import state

    return state.should_stop, state.should_terminate


def embedded_broker_settings(
    folder: str | os.PathLike[str], polling_interval: float = 0.05, watch: bool = True
) -> dict[str, Any]:
    """Return Celery settings that use the embedded broker rooted at ``folder``.

    Creates the queue, control and processed sub-folders; paths are made absolute. A consumer
    looks at the queue folder every `polling_interval` s, and at once when a message lands
    there if `watch` (inotify, on Linux).
    """
    root = Path(folder).resolve()
    queue_dir, control_dir, processed_dir = root / "queue", root / "control", root / "processed"
    for path in (queue_dir, control_dir, processed_dir):
        path.mkdir(parents=True, exist_ok=True)
    return {
        # The URL only names the scheme; broker_transport wins over it in
        # kombu.Connection, and a dotted path is not accepted inside a URL.
        "broker_url": "filesystem://",
        "broker_transport": TRANSPORT_PATH,
        "broker_transport_options": {
            # One shared folder: what a producer writes is what consumers read.
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            # The default is relative to each process's cwd, which would split
            # the exchange tables (fanout, remote control) between processes.
            "control_folder": str(control_dir),
            # A claim must be a same-filesystem rename so that only one consumer
            # wins; without this kombu moves into the system temp dir, which may
            # be another filesystem (copy + delete, so duplicates are possible).
            "store_processed": True,
            "processed_folder": str(processed_dir),
            "polling_interval": polling_interval,
            "watch_folder": watch,
        },
    }
