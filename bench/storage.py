"""The bench's own storage on the services, emptied around each part: its Redis db and its
PostgreSQL schemas (nothing else is touched)."""

from __future__ import annotations

from . import apps


def flush_redis() -> None:
    """Empty the bench's Redis db (`apps.REDIS_URL`)."""
    import redis

    client = redis.Redis.from_url(apps.REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


def postgres(*statements: str) -> None:
    """Run `statements` in one transaction on the bench's PostgreSQL database, each waiting
    at most 10 s for a lock rather than forever."""
    import sqlalchemy as sa

    engine = sa.create_engine(apps.POSTGRES_URL)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SET lock_timeout = '10s'"))
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()
