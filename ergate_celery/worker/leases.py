"""A step's claim kept alive by its worker, not by its message.

While a step runs, its worker process renews the claim's lease every third of it
(`renewer.py`), whatever the step does (reports progress or not) and whatever happens to its
message. A claim is taken over only once its lease has expired: its worker stopped renewing
it (killed, lost with its host). A redelivered message proves nothing — Redis restores any
message held past `visibility_timeout` (a retry's countdown, a prefetched one), and the flag
can be forged — so a redelivered copy that finds a live lease watches it (`lease_expired`)
instead: renewed, its holder lives and the copy is dropped; left to expire, the copy claims.
A copy whose time limit ends its watch first is handed back to the queue once, due when the
lease would expire (`hand_back`), noting the lease it saw: renewed by then, it is dropped.
A claim token names its pool process: when the worker's main process sees that process die,
it ends the lease at once (`let_go`), and the requeued message runs the step again.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from celery import Task

from ergate_celery.lifecycle.events import ProcessLost
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


#: The message header of a copy handed back by `hand_back`: the lease it found (ISO 8601).
LEASE_SEEN_HEADER = "ergate_lease_seen"
#: Seconds a handed-back copy comes after the lease it saw would expire.
HAND_BACK_MARGIN = 0.2


def lease_seen(task: Task[Any, Any]) -> datetime | None:
    """The lease a handed-back copy found when it was handed back (None: not one)."""
    seen = getattr(task.request, LEASE_SEEN_HEADER, None)
    try:
        return datetime.fromisoformat(seen) if isinstance(seen, str) else None
    except ValueError:
        return None


def hand_back(rt: Runtime, task: Task[Any, Any], held: Job) -> bool:
    """Publish a copy of the running message, due when the lease of `held` would expire,
    noting that lease; whether it was published. The copy then finds the lease renewed (its
    holder lives: it is dropped) or expired (it claims the job). False when the copy could
    come more than once: Redis restores a message whose countdown outlasts its
    `visibility_timeout`."""
    request = task.request
    assert held.lease_until is not None
    countdown = max(0.0, (held.lease_until - rt.clock()).total_seconds()) + HAND_BACK_MARGIN
    options = task.app.conf.broker_transport_options or {}
    visibility = options.get("visibility_timeout")
    if isinstance(visibility, int | float) and countdown >= visibility:
        return False
    delivery = request.delivery_info or {}
    # The message as it came (its display, priority and queue), due later, with the lease.
    same: dict[str, Any] = {
        "argsrepr": getattr(request, "argsrepr", None),
        "kwargsrepr": getattr(request, "kwargsrepr", None),
        "priority": delivery.get("priority"),
        "queue": delivery.get("routing_key") or None,
    }
    try:
        task.apply_async(
            tuple(request.args or ()),
            dict(request.kwargs or {}),
            task_id=request.id,
            countdown=countdown,
            headers={LEASE_SEEN_HEADER: held.lease_until.isoformat()},
            **same,
        )
    except Exception as exc:
        logger.warning("Could not hand a copy of job %s back (%r)", held.id, exc)
        return False
    return True
