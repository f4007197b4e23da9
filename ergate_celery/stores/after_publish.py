"""Celery's `after_task_publish` for a step message the store's script writes: held back while
`apply_async` builds the message, sent once the script has written it.

Celery sends the signal as its publish returns, which for a collected message is before the
script runs; and the script may write no message at all (the job stored parked, the id taken,
a compare-and-set that lost its race). Celery documents the signal as "after the message was
sent", so a receiver counting publishes must not see those. `before_task_publish` is not held:
its receivers may change the headers and body, so it runs before the message is collected.

The signal's receivers are looked up per send (`Signal._live_receivers`); inside `holding`, and
for the task collected only, that lookup hands the send to a recorder instead. Every other
send, in this thread or another, goes through unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

from celery.signals import after_task_publish

logger = logging.getLogger(__name__)

#: Each held send's keyword arguments (`sender` among them), in order.
Held = list[dict[str, Any]]

_holding: ContextVar[tuple[str, Held] | None] = ContextVar("ergate_after_publish", default=None)
_install_lock = threading.Lock()
_installed = False


@contextmanager
def holding(task_name: str) -> Iterator[Held]:
    """`after_task_publish` sends for `task_name` inside this block are recorded, not sent;
    `release` sends them."""
    _install()
    held: Held = []
    token = _holding.set((task_name, held))
    try:
        yield held
    finally:
        _holding.reset(token)


def release(held: Held) -> None:
    """Send what `holding` recorded, as Celery would have (once: `held` is emptied)."""
    sends = held[:]
    held.clear()
    for named in sends:
        after_task_publish.send(**named)


def _record(held: Held, signal: Any = None, sender: Any = None, **named: Any) -> None:
    held.append({"sender": sender, **named})


def _install() -> None:
    global _installed
    if _installed:
        return
    with _install_lock:
        if _installed:
            return
        live: Callable[[Any], list[Any]] = getattr(after_task_publish, "_live_receivers")  # noqa: B009

        def live_receivers(sender: Any) -> list[Any]:
            holding = _holding.get()
            if holding is None or holding[0] != sender:
                return live(sender)
            return [partial(_record, holding[1])]

        # On this one signal object only: its class, and every other signal, are untouched.
        setattr(after_task_publish, "_live_receivers", live_receivers)  # noqa: B010
        _installed = True
        logger.debug("after_task_publish is held back for messages written by the job store")
