"""The order form."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import forms
from django.utils import timezone

from .services import CATALOG, DECLINED_CARD, STOCK
from .workflows import Order

CARDS = [
    ("4242424242424242", "Test card •••• 4242 (accepted)"),
    (DECLINED_CARD, "Test card that is declined (the order is refunded)"),
]


class OrderForm(forms.Form):
    sku = forms.ChoiceField(
        label="Product",
        choices=[(p.sku, f"{p.name} — {p.price_cents / 100:.2f} €") for p in CATALOG.values()],
    )
    quantity = forms.IntegerField(
        min_value=1,
        max_value=99,
        initial=1,
        help_text=f"The warehouse holds {STOCK} of each product: order more and the job fails.",
    )
    card = forms.ChoiceField(choices=CARDS, initial=CARDS[0][0])
    start_at = forms.DateTimeField(
        label="Start at",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}),
        help_text="Leave empty to start now; a later time keeps the job SCHEDULED until then.",
    )

    def clean_start_at(self) -> datetime | None:
        start_at: datetime | None = self.cleaned_data["start_at"]
        if start_at is not None and start_at < timezone.now() - timedelta(minutes=1):
            raise forms.ValidationError("This time has passed; leave it empty to start now.")
        return start_at

    def order(self) -> Order:
        """The workflow's input."""
        data = self.cleaned_data
        return {"sku": data["sku"], "quantity": data["quantity"], "card": data["card"]}
