"""`cancel_job`: a job that waits is CANCELLED at once and runs no step; a running one is
CANCELLING until its step ends; a finished one is left as it was. A job waiting for the
children of a fan-out is CANCELLING until its unfinished children, cancelled here, have ended.

A job that ends here frees its concurrency slot, and the job that takes it is published.
Inside a Django transaction that happens on commit, as for `queueing`'s operations: on
django-db the cancel is written in the transaction and the next job published on commit (see
`worker.concurrency.publish_when_committed`); on a store whose writes do not join it, the job
is only read now and the cancel written on commit, so a rollback changes nothing.
"""

from __future__ import annotations

from ergate_celery.lifecycle.events import Cancel
from ergate_celery.lifecycle.transitions import transition
from ergate_celery.model.job import Job
from ergate_celery.operations.queueing import logged_after_commit
from ergate_celery.operations.reading import job_not_found, reading
from ergate_celery.transactions import in_django_transaction, on_commit
from ergate_celery.worker import observing
from ergate_celery.worker.fan_out import cancel_children
from ergate_celery.worker.runtime import Runtime

#: The `sender` of the announcements of `cancel_job`.
CANCEL_SENDER = "ergate.cancel_job"


def cancel_job(rt: Runtime, job_id: str, *, publish_on_commit: bool = True) -> Job:
    """Cancel a job; returns it as it is now, from the one read of the change (inside a
    Django transaction, on a store outside it: as the cancel will leave it, see the module),
    unless not `publish_on_commit` (a store outside it, as a tester's)."""
    deferred = publish_on_commit and in_django_transaction()
    if not deferred or rt.store.joins_django_transaction:
        return _cancel(rt, job_id)
    stored = reading(job_id, lambda: rt.store.get(job_id))
    if stored is None:
        raise job_not_found(job_id)
    on_commit(lambda: logged_after_commit("Cancelling", job_id, lambda: _cancel(rt, job_id)))
    return transition(stored, Cancel(), rt.clock()) or stored


def _cancel(rt: Runtime, job_id: str) -> Job:
    with observing.operating(CANCEL_SENDER, job_id):
        before, after = reading(job_id, lambda: rt.apply(job_id, Cancel(), sender=CANCEL_SENDER))
    if after is not None:
        if after.fan_out is not None:
            cancel_children(rt, after, CANCEL_SENDER)
            return rt.store.get(job_id) or after
        return after
    if before is None:
        raise job_not_found(job_id)
    return before
