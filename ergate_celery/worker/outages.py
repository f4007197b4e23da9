"""Telling a result backend that cannot be reached from an error in the data or in the code.

A step message that meets an outage (after `Runtime.retrying` gave up) goes back to the queue
instead of being acknowledged and dropped: the job continues once the backend returns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from celery.exceptions import Reject

logger = logging.getLogger(__name__)

#: Exception class names (anywhere in the class's MRO) that mean "the server is unreachable"
#: on the backends ergate_celery supports: redis-py's, SQLAlchemy's and Django's database
#: errors, kombu's and the standard library's. By name, so that no optional driver is imported.
_OUTAGE_NAMES = frozenset(
    {
        "ConnectionError",
        "TimeoutError",
        "BusyLoadingError",
        "OperationalError",
        "InterfaceError",
        "DisconnectionError",
        "OSError",
    }
)


def is_outage(exc: BaseException) -> bool:
    """True when `exc` says the backend (or broker) could not be reached or answer in time."""
    return any(klass.__name__ in _OUTAGE_NAMES for klass in type(exc).__mro__)


@contextmanager
def requeued_on_outage(what: str) -> Iterator[None]:
    """Send the message back to the queue when the backend stays unreachable (past the
    retries of `Runtime.retrying`), rather than acknowledge and drop it: its redelivery
    tries again, and the job continues once the backend returns."""
    try:
        yield
    except Exception as exc:
        if not is_outage(exc):
            raise
        logger.warning("%s failed (%r); the message goes back to the queue", what, exc)
        raise Reject(exc, requeue=True) from exc
