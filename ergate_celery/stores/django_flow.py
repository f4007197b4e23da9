"""The django-db store's rows for flow control: the paused workflows and the concurrency
slots, as Django models of the `ergate_celery.contrib.django` app."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db import IntegrityError, transaction

from ergate_celery.exceptions import ErgateError


def app_model(name: str) -> Any:
    if not apps.is_installed("ergate_celery.contrib.django"):
        raise ErgateError(
            "Jobs on the django-db backend need the ergate_celery Django app: add "
            '"ergate_celery.contrib.django" to INSTALLED_APPS and run migrate'
        )
    return apps.get_model("ergate_celery", name)


class DjangoFlowRows:
    """`paused_workflows`, `set_paused` and the slot primitives of `FlowControl`, on Django's
    ORM (inside the caller's transaction, as every write of this store)."""

    # Paused workflows.

    def paused_workflows(self) -> set[str]:
        return set(app_model("PausedWorkflow").objects.values_list("workflow", flat=True))

    def set_paused(self, workflow_name: str, paused: bool) -> bool:
        model = app_model("PausedWorkflow")
        if not paused:
            deleted, _ = model.objects.filter(workflow=workflow_name).delete()
            return bool(deleted)
        _, created = model.objects.get_or_create(workflow=workflow_name)
        return bool(created)

    # Concurrency slots.

    def _read_slots(self, name: str) -> str | None:
        found = app_model("ConcurrencySlots").objects.filter(name=name).values_list("document")
        row = found.first()
        return None if row is None else str(row[0])

    def _swap_slots(self, name: str, expected: str | bytes | None, new: str | None) -> bool:
        rows = app_model("ConcurrencySlots").objects
        if expected is None:
            if new is None:
                return True
            try:
                with transaction.atomic():  # a savepoint inside the caller's transaction
                    rows.create(name=name, document=new)
            except IntegrityError:
                return False
            return True
        old = expected.decode() if isinstance(expected, bytes) else expected
        match = rows.filter(name=name, document=old)
        changed = match.delete()[0] if new is None else match.update(document=new)
        return bool(changed)
