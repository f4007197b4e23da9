"""Stand-ins for the outside systems an order touches: the warehouse and the card gateway.

They are deterministic so the demo and the tests can count on them: the warehouse holds
`STOCK` units of every product, and the gateway times out on the first attempt of a charge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price_cents: int


CATALOG: dict[str, Product] = {
    product.sku: product
    for product in (
        Product("MUG", "Ergate mug", 1200),
        Product("TEE", "Ant colony T-shirt", 2500),
        Product("HIVE", "Formicarium starter kit", 8900),
    )
}

#: Units of each product in the warehouse; ordering more fails the order.
STOCK = 20

#: The test card number that the gateway declines (the order is refunded).
DECLINED_CARD = "declined"


class OutOfStockError(Exception):
    """The warehouse cannot reserve the quantity ordered."""


class GatewayTimeoutError(ConnectionError):
    """The payment gateway did not answer in time; trying again may work."""


class InventoryClient:
    """A connection to the warehouse (a real one would talk to its API)."""

    def __init__(self, warehouse: str) -> None:
        self.warehouse = warehouse
        self.closed = False

    def reserve(self, sku: str, quantity: int, key: str) -> str:
        """Hold `quantity` units of `sku`; the same `key` always gives the same reservation."""
        if quantity > STOCK:
            raise OutOfStockError(
                f"Only {STOCK} × {sku} in stock at {self.warehouse}, {quantity} ordered"
            )
        return f"RES-{key}"

    def release(self, reservation: str) -> None:
        logger.info("Released reservation %s", reservation)

    def close(self) -> None:
        self.closed = True


class PaymentGateway:
    """The card gateway: times out on the first attempt of every charge, then answers."""

    def charge(self, card: str, amount_cents: int, idempotency_key: str, attempt: int) -> str:
        """Charge the card once per `idempotency_key`; returns the payment id."""
        if attempt == 1:
            raise GatewayTimeoutError("payment gateway timed out (simulated; Celery retries)")
        return f"PAY-{idempotency_key}"
