"""A package whose workflows module cannot be imported (for `tests.apps.broken_app`)."""
