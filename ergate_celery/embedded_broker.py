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

__all__ = ["TRANSPORT_PATH", "Channel", "Transport", "embedded_broker_settings"]

#: Import path kombu resolves when given as ``broker_transport`` (no kombu globals touched).
TRANSPORT_PATH = "ergate_celery.embedded_broker:Transport"


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
    """kombu filesystem transport whose channels write messages atomically, and whose
    worker stops within one poll instead of within two of its 2 s drain cycles."""

    Channel = Channel

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> None:
        """Deliver one message, polling every `polling_interval` s; `TimeoutError` after
        `timeout` s, or as soon as this process's worker has been asked to stop (its loop
        only looks at the stop flag between two drains)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cycle = self.cycle
        assert cycle is not None  # made with the transport
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
            if self.polling_interval:
                time.sleep(
                    self.polling_interval if deadline is None else min(self.polling_interval, left)
                )


def _worker_stopping() -> bool:
    # Celery's own test for these flags: 0 (a plain stop) counts, None and False do not.
    return any(flag is not None and flag is not False for flag in _stop_flags())


def _stop_flags() -> tuple[Any, Any]:
    from celery.worker import state

    return state.should_stop, state.should_terminate


def embedded_broker_settings(
    folder: str | os.PathLike[str], polling_interval: float = 0.05
) -> dict[str, Any]:
    """Return Celery settings that use the embedded broker rooted at ``folder``.

    Creates the queue, control and processed sub-folders; paths are made absolute.
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
        },
    }
