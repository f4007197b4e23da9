"""One thread per worker process renews the leases of every step the process runs.

`with Heartbeat(rt, job_id, token, sender):` holds a step's claim while the step runs: the block
adds the claim to its process's renewer and its end takes it out again (waiting for a renewal
of that claim in flight, so none comes after the block). The renewer's thread renews each
claim every third of its lease (`renew_every`), whatever the step does and whatever happens to
its message, and forgets a claim that is no longer held (taken over, or its job moved on).

The thread starts with the first claim a process holds: in a prefork pool process, after the
fork, since a thread does not survive one. A forked child starts with no claims and no thread.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from ergate_celery.lifecycle.events import Renew
from ergate_celery.worker.leases import LastWritten, lease_length, renew_every
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Claim:
    rt: Runtime
    job_id: str
    token: str
    sender: str
    #: When to renew it next (`time.monotonic()`).
    due: float
    #: Given each record a renewal wrote (the step's outcome is written against the last).
    written: LastWritten | None = None


class _Renewer:
    """The claims of this process, and the thread that renews them."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Also a forked child's first act: the parent's lock may have been held at the fork.
        self._changed = threading.Condition(threading.Lock())
        self._claims: set[_Claim] = set()
        self._renewing: _Claim | None = None
        self._thread: threading.Thread | None = None
        #: When the thread wakes by itself next (`time.monotonic()`), and how long it sleeps
        #: while it holds no claim: a renewal interval seen before.
        self._wake_at = math.inf
        self._idle: float | None = None

    def add(self, claim: _Claim, every: float) -> None:
        with self._changed:
            self._claims.add(claim)
            self._idle = every if self._idle is None else min(self._idle, every)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ergate-lease-renewer", daemon=True
                )
                self._thread.start()
            # Waking the thread for every step costs two context switches and a hand-over
            # of the GIL: only a claim due before it wakes by itself needs it.
            if claim.due < self._wake_at:
                self._changed.notify()

    def remove(self, claim: _Claim) -> None:
        with self._changed:
            self._claims.discard(claim)
            while self._renewing is claim:
                self._changed.wait()

    def _run(self) -> None:
        while True:
            claim = self._next()
            held = True
            try:
                held = _renew(claim)
            except BaseException:
                # Nothing may end the one thread that keeps every claim of the process.
                logger.exception("Renewing the lease of job %s failed", claim.job_id)
            finally:
                with self._changed:
                    self._renewing = None
                    if not held:
                        self._claims.discard(claim)
                    self._changed.notify_all()
            if not self._claims:
                _close_django_connections()

    def _next(self) -> _Claim:
        """The claim to renew now, once one is due (marked as being renewed)."""
        with self._changed:
            while True:
                now = time.monotonic()
                first = min(self._claims, key=lambda claim: claim.due, default=None)
                if first is not None and first.due <= now:
                    first.due = now + renew_every(first.rt.settings)
                    self._renewing = first
                    return first
                if first is not None:
                    self._wake_at = first.due
                elif self._idle is not None:
                    # A claim added while it sleeps is due no sooner than a renewal interval
                    # from then: it wakes in time for it without being told.
                    self._wake_at = now + self._idle
                else:
                    self._wake_at = math.inf
                self._changed.wait(None if self._wake_at == math.inf else self._wake_at - now)


def _renew(claim: _Claim) -> bool:
    """Renew the claim's lease once; whether it is still held (keep renewing it)."""
    rt = claim.rt
    try:
        lease_until = rt.clock() + lease_length(rt.settings)
        before, after = rt.apply(claim.job_id, Renew(claim.token, lease_until), sender=claim.sender)
    except Exception as exc:
        # A blip must not end the renewals: the lease has room for two more tries, on a new
        # connection if it was the connection that broke.
        logger.warning("Could not renew the lease of job %s (%r)", claim.job_id, exc)
        _close_django_connections()
        return True
    if claim.written is not None:
        claim.written(after)
    return after is not None or (before is not None and before.claim == claim.token)


_renewer = _Renewer()
os.register_at_fork(after_in_child=_renewer._reset)


class Heartbeat:
    """`with Heartbeat(rt, job_id, token, sender):` has this process's renewer renew the
    claim `token` holds on the job until the block ends or the claim is no longer held; each
    record a renewal writes goes to `written`."""

    def __init__(
        self, rt: Runtime, job_id: str, token: str, sender: str, written: LastWritten | None = None
    ) -> None:
        self._claim = _Claim(rt, job_id, token, sender, time.monotonic(), written)

    def __enter__(self) -> Heartbeat:
        claim = self._claim
        every = renew_every(claim.rt.settings)
        claim.due = time.monotonic() + every
        _renewer.add(claim, every)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _renewer.remove(self._claim)


def _close_django_connections() -> None:
    # The renewer's thread is no task: nothing else closes the Django connection it opened on
    # django-db; it does when it holds no claim. A process may import Django without
    # configuring it: then it opened none.
    if "django.db" in sys.modules:
        from django.conf import settings
        from django.db import connections

        if settings.configured:
            connections.close_all()
