"""Django transactions, when Django is in use: publish on commit, never on rollback."""

from __future__ import annotations

import sys
from collections.abc import Callable


def in_django_transaction() -> bool:
    """True inside a Django `transaction.atomic()` block (False when Django is not in use)."""
    if "django.db" not in sys.modules:
        return False
    from django.conf import settings

    if not settings.configured:
        return False
    from django.db import connection

    return bool(connection.in_atomic_block)


def on_commit(callback: Callable[[], None]) -> None:
    """Run `callback` once the current Django transaction commits.

    Robust (Django 4.2+): when it raises, the hooks registered after it still run. A hook
    registered before it that raises stops it; the sweep then hands the job over.
    """
    import django
    from django.db import transaction

    if django.VERSION >= (4, 2):
        transaction.on_commit(callback, robust=True)
    else:
        transaction.on_commit(callback)
