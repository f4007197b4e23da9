"""What the tests share: users and placing an order through the form."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.test import Client
from django.utils import timezone

from ..models import OrderJob

ORDER = {"sku": "MUG", "quantity": "2", "card": "4242424242424242", "start_at": ""}


def make_user(username: str, **extra: Any) -> AbstractBaseUser:
    return get_user_model().objects.create_user(
        username, email=f"{username}@example.com", password="secret-pass-123", **extra
    )


def place_order(
    client: Client, start_at: datetime | None = None, **fields: Any
) -> tuple[Any, str | None]:
    """POST the order form; returns the response and the new job id (None when refused)."""
    data = {**ORDER, **{key: str(value) for key, value in fields.items()}}
    if start_at is not None:
        data["start_at"] = timezone.localtime(start_at).strftime("%Y-%m-%dT%H:%M:%S")
    before = set(OrderJob.objects.values_list("job_id", flat=True))
    response = client.post("/orders/new/", data)
    new = set(OrderJob.objects.values_list("job_id", flat=True)) - before
    return response, (new.pop() if new else None)
