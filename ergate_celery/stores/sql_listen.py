"""PostgreSQL: waiting for a job's end by LISTEN/NOTIFY rather than by reading its record over
and over.

The write that makes a job final sends `pg_notify(channel, job id)` in the same statement
(sql_postgres.py): the notification goes out when that write commits, and only then. A process
that waits holds one listening connection of its own, opened at its first wait (on psycopg 3),
and a thread that hands each notification to the waiters of that job. A waiter registers
before it reads the record, so an end between its read and its wait is not missed; it reads
again when told, every `REREAD` s in case a notification was lost (a reconnect), and every
poll interval while the listener has no connection, or had none when it last read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ergate_celery.model.job import Job

logger = logging.getLogger(__name__)

#: Seconds between two reads of a waited-for record while listening.
REREAD = 5.0
#: Seconds the listening connection stays open without waiters before it is closed.
IDLE_CLOSE = 60.0
#: Seconds before a failed connection is tried again (waiters poll meanwhile).
RETRY = 2.0


def channel_of(schema: str | None) -> str:
    """The channel of a store's final writes: one per schema, so apps on other schemas of
    the database are not woken; at most 63 bytes, PostgreSQL's longest name."""
    return f"ergate_final_{schema or 'public'}"[:63]


class Listener:
    """A process's listening connection on `channel`, opened by `connect` (a psycopg 3
    connection), and the waiters it wakes."""

    def __init__(self, connect: Callable[[], Any], channel: str) -> None:
        self._connect = connect
        self.channel = channel
        self._waiters: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        #: Set while the connection is listening: a notification sent from then on arrives.
        self.listening = threading.Event()

    @contextmanager
    def watching(self, job_id: str) -> Iterator[threading.Event]:
        """An event set when `job_id` ends (or when the listener has to be read around)."""
        event = threading.Event()
        with self._lock:
            self._started()
            self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                events = self._waiters.get(job_id, set())
                events.discard(event)
                if not events:
                    self._waiters.pop(job_id, None)

    def _started(self) -> None:
        # A thread does not cross a fork: a child process starts a listener of its own.
        alive = self._thread is not None and self._thread.is_alive()
        if alive and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.listening = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self.listening,), name="ergate-listen", daemon=True
        )
        self._thread.start()

    def _wake(self, job_id: str | None) -> None:
        with self._lock:
            if job_id is None:
                events = [event for waiting in self._waiters.values() for event in waiting]
            else:
                events = list(self._waiters.get(job_id, ()))
        for event in events:
            event.set()

    def _idle(self, listening: threading.Event) -> bool:
        with self._lock:
            if self._waiters:
                return False
            # Decided under the lock: a waiter that comes next starts a new thread.
            listening.clear()
            self._thread = None
            return True

    def _run(self, listening: threading.Event) -> None:
        while True:
            try:
                if self._listen(listening):
                    return
            except Exception as exc:
                logger.warning("Listening for ended jobs failed (%r); reading instead", exc)
            listening.clear()
            self._wake(None)  # each waiter reads again, and polls until the next connection
            time.sleep(RETRY)

    def _listen(self, listening: threading.Event) -> bool:
        """Listen until idle for `IDLE_CLOSE` s (True); an error ends it otherwise."""
        with self._connect() as conn:
            conn.execute(f'LISTEN "{self.channel}"')
            # Each waiter reads again; one that reads once `listening` is set waits to be told.
            self._wake(None)
            listening.set()
            idle_since = None
            while True:
                for notify in conn.notifies(timeout=1.0):
                    self._wake(notify.payload)
                with self._lock:
                    waited = bool(self._waiters)
                if waited:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > IDLE_CLOSE and self._idle(listening):
                    return True


def can_listen() -> bool:
    """Whether the installed psycopg waits for a notification with a timeout (3.2 and later);
    with an older one, waiters read every poll interval."""
    import psycopg

    major, minor = psycopg.__version__.split(".")[:2]
    return (int(major), int(minor)) >= (3, 2)


def connect_for_listening(engine: Any) -> Any:
    """A psycopg 3 connection made as the engine makes its own (its `connect_args`, its
    connect events), taken out of its pool, in autocommit."""
    pooled = engine.raw_connection()
    conn = pooled.driver_connection
    pooled.detach()  # the pool no longer counts it, nor hands it out again
    conn.rollback()  # a connection the pool had: out of any transaction, to set autocommit
    conn.autocommit = True
    return conn


def wait_final(
    listener: Listener,
    read: Callable[[str], Job | None],
    job_id: str,
    timeout: float | None,
    poll_interval: float,
) -> Job | None:
    """See `JobStore.wait_final`: read the record, then wait to be told of its end."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with listener.watching(job_id) as ended:
        while True:
            # Looked at before the read: a notification sent after the read arrives only if
            # the connection was listening then.
            listened = listener.listening.is_set()
            job = read(job_id)
            if job is None or job.is_final:
                return job
            remaining = REREAD if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return job
            ended.wait(min(remaining, REREAD if listened else poll_interval))
            ended.clear()
