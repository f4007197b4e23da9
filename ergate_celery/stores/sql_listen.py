"""PostgreSQL: waiting for a job's end by LISTEN/NOTIFY rather than by reading its record over
and over.

The write that makes a job final sends `pg_notify(channel, job id)` in the same statement
(sql_postgres.py): the notification goes out when that write commits, and only then. While a
process waits, it holds one listening connection of its own (on psycopg 3.2+), opened by its
first waiter and closed when its last waiter is done: no session outlives the waits (a test
runner that drops its database afterwards finds none). A thread hands each notification to
the waiters of that job. A waiter registers before it reads the record, so an end between
its read and its wait is not missed; it reads again when told, every `REREAD` s in case a
notification was lost (a reconnect), and every poll interval while the connection is not
listening yet, or was not when it last read.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ergate_celery.model.job import Job

logger = logging.getLogger(__name__)

#: Seconds between two reads of a waited-for record while listening.
REREAD = 5.0
#: Seconds before a failed connection is tried again (waiters poll meanwhile).
RETRY = 2.0


def channel_of(schema: str | None) -> str:
    """The channel of a store's final writes: one per schema, so apps on other schemas of
    the database are not woken; at most 63 bytes, PostgreSQL's longest name."""
    return f"ergate_final_{schema or 'public'}"[:63]


class _Session:
    """One listening connection's life, from the first waiter to the last."""

    def __init__(self) -> None:
        #: Set while the connection listens: a notification sent from then on arrives.
        self.listening = threading.Event()
        self.stopped = False
        self.conn: Any = None


class Listener:
    """A process's listening connection on `channel`, opened by `connect` (a psycopg 3
    connection in autocommit) while anyone waits, and the waiters it wakes."""

    def __init__(self, connect: Callable[[], Any], channel: str) -> None:
        self._connect = connect
        self.channel = channel
        self._waiters: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._pid = os.getpid()

    def is_listening(self) -> bool:
        """Whether a notification sent now reaches this process's waiters."""
        session = self._session
        return session is not None and session.listening.is_set()

    @contextmanager
    def watching(self, job_id: str) -> Iterator[threading.Event]:
        """An event set when `job_id` ends (or when the waiter should read anyway)."""
        event = threading.Event()
        with self._lock:
            if self._pid != os.getpid():  # a fork's child: neither thread nor waiters came
                self._pid, self._session, self._waiters = os.getpid(), None, {}
            if self._session is None:
                self._session = _Session()
                thread = threading.Thread(
                    target=self._run, args=(self._session,), name="ergate-listen", daemon=True
                )
                thread.start()
            self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            self._unwatch(job_id, event)

    def _unwatch(self, job_id: str, event: threading.Event) -> None:
        with self._lock:
            events = self._waiters.get(job_id, set())
            events.discard(event)
            if not events:
                self._waiters.pop(job_id, None)
            if self._waiters or self._session is None:
                return
            session, self._session = self._session, None
            session.stopped = True
            session.listening.clear()
            conn = session.conn
        if conn is not None:
            _interrupt(conn)

    def _wake(self, job_id: str | None) -> None:
        with self._lock:
            if job_id is None:
                events = [event for waiting in self._waiters.values() for event in waiting]
            else:
                events = list(self._waiters.get(job_id, ()))
        for event in events:
            event.set()

    def _run(self, session: _Session) -> None:
        while not session.stopped:
            try:
                self._listen(session)
            except Exception as exc:
                if session.stopped:
                    return  # its connection was shut down on purpose
                logger.warning("Listening for ended jobs failed (%r); reading instead", exc)
            session.listening.clear()
            self._wake(None)  # each waiter reads again, and polls until the next connection
            time.sleep(RETRY)

    def _listen(self, session: _Session) -> None:
        conn = self._connect()
        with self._lock:
            if session.stopped:
                conn.close()
                return
            session.conn = conn
        with conn:
            conn.execute(f'LISTEN "{self.channel}"')
            # Each waiter reads again; one that reads once `listening` is set waits to be told.
            self._wake(None)
            session.listening.set()
            while not session.stopped:
                for notify in conn.notifies(timeout=REREAD):
                    self._wake(notify.payload)


def _interrupt(conn: Any) -> None:
    """End the listening thread's wait on `conn` at once, from another thread: its socket is
    shut down, and the listening thread closes the connection itself. Closing it from here
    would free libpq's connection while that thread is inside it (a crash, not an error)."""
    try:
        fd = conn.pgconn.socket
        sock = socket.socket(fileno=os.dup(fd))
    except Exception:
        return  # not connected any more: the listening thread is ending already
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()  # the duplicate only


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
            listened = listener.is_listening()
            job = read(job_id)
            if job is None or job.is_final:
                return job
            remaining = REREAD if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return job
            ended.wait(min(remaining, REREAD if listened else poll_interval))
            ended.clear()
