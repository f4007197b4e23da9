"""A workflows module that fails at import, as one with a typo or a missing setting does."""

raise RuntimeError("ORDERS_API_URL is not set")
