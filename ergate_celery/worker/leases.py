"""A step's claim kept alive by its worker, not by its message.

While a step runs, a `Heartbeat` thread of the worker process renews the claim's lease every
third of it, whatever the step does (reports progress or not) and whatever happens to its
message. A claim is taken over only once its lease has expired: its worker stopped renewing
it (killed, lost with its host). A redelivered message proves nothing — Redis restores any
message held past `visibility_timeout` (a retry's countdown, a prefetched one), and the flag
can be forged — so a redelivered copy that finds a live lease watches it (`lease_expired`)
instead: renewed, its holder lives and the copy is dropped; left to expire, the copy claims.
A claim token names its pool process: when the worker's main process sees that process die,
it ends the lease at once (`let_go`), and the requeued message runs the step again.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from datetime import timedelta
from types import TracebackType

from ergate_celery.lifecycle.events import ProcessLost, Renew
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import RUNNING_STATUSES
from ergate_celery.settings import ErgateSettings
from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)


def holder(hostname: str | None, pid: int) -> str:
    """What every claim token of the pool process `pid` of worker `hostname` starts with."""
    return f"{hostname}/{pid}/"


def claim_token(hostname: str | None) -> str:
    """A new claim token, naming the process that holds it: when that process dies, its
    worker's main process lets the claim go (`ProcessLost`) instead of waiting for the lease."""
    return f"{holder(hostname, os.getpid())}{uuid.uuid4().hex}"


def let_go(rt: Runtime, job_id: str, hostname: str | None, pid: int, sender: str) -> None:
    """End the lease of the claim the dead pool process `pid` held on the job, if it holds
    one: the step's requeued message then runs it again at once."""
    try:
        rt.apply(job_id, ProcessLost(holder(hostname, pid)), sender=sender)
    except Exception as exc:  # the lease then simply runs out
        logger.warning("Could not end the lease of job %s after its process died (%r)", job_id, exc)


def lease_length(settings: ErgateSettings) -> timedelta:
    """How long a claim holds unrenewed: `ergate_lease_seconds`, or `ergate_stuck_after` if
    shorter (the sweep then finds a lost worker's step as soon as it looks)."""
    return timedelta(seconds=min(settings.lease_seconds, settings.stuck_after))


def renew_every(settings: ErgateSettings) -> float:
    """Seconds between two renewals of a running step's lease: a third of the lease, so one
    late or failed renewal does not let it expire."""
    return lease_length(settings).total_seconds() / 3


class LastWritten:
    """The job as a step run last wrote it while holding its claim (a lease renewal, a
    progress report): its outcome is written against that, with no read first. (Two writes
    racing may leave an older one here: the outcome's compare-and-set then reads.)"""

    def __init__(self, job: Job) -> None:
        self.job = job

    def __call__(self, written: Job | None) -> None:
        if written is not None:
            self.job = written


class Heartbeat:
    """`with Heartbeat(rt, job_id, token, sender):` renews the claim `token` holds on the job
    in a thread of its own, until the block ends or the claim is no longer held; each record
    renewed goes to `written`."""

    def __init__(
        self,
        rt: Runtime,
        job_id: str,
        token: str,
        sender: str,
        written: LastWritten | None = None,
    ) -> None:
        self.rt, self.job_id, self.token, self.sender = rt, job_id, token, sender
        self.written = written
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"ergate-heartbeat-{job_id}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        every = renew_every(self.rt.settings)
        try:
            while not self._stop.wait(every):
                if not self._renew():
                    return
        finally:
            _close_django_connections()

    def _renew(self) -> bool:
        """Renew the lease once; whether the claim is still held (keep renewing)."""
        rt = self.rt
        lease_until = rt.clock() + lease_length(rt.settings)
        try:
            before, after = rt.apply(
                self.job_id, Renew(self.token, lease_until), sender=self.sender
            )
        except Exception as exc:
            # A blip must not end the heartbeat: the lease has room for two more tries.
            logger.warning("Could not renew the lease of job %s (%r)", self.job_id, exc)
            return True
        if self.written is not None:
            self.written(after)
        return after is not None or (before is not None and before.claim == self.token)


def lease_expired(
    rt: Runtime, job_id: str, held: Job, *, give_up_at: float | None = None
) -> bool | None:
    """Watch the lease of `held` (a job another run holds) until it is renewed or expires:
    True when it expired unrenewed (claim the job: its holder is gone), False when its holder
    renewed it or the job moved on (drop the message: it is a copy). None when the lease
    still held at `give_up_at` (a `time.monotonic()` value: the watcher's own time limit
    comes first), neither renewed nor expired."""
    every = renew_every(rt.settings)
    while True:
        lease_until = held.lease_until
        now = rt.clock()
        if lease_until is None or lease_until <= now:
            return True
        pause = min((lease_until - now).total_seconds() + 0.05, every / 2)
        if give_up_at is not None:
            left = give_up_at - time.monotonic()
            if left <= 0:
                return None
            pause = min(pause, left)
        time.sleep(pause)
        current = rt.store.get(job_id)
        if current is None or current.claim != held.claim:
            return False
        if current.status not in RUNNING_STATUSES:
            return False
        if current.lease_until is not None and current.lease_until > lease_until:
            return False
        held = current


def _close_django_connections() -> None:
    # The heartbeat thread is no task: nothing else closes the Django connection it opened
    # on django-db. A process may import Django without configuring it: then it opened none.
    if "django.db" in sys.modules:
        from django.conf import settings
        from django.db import connections

        if settings.configured:
            connections.close_all()
