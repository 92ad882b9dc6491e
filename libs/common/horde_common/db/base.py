"""Declarative base, engine and session factory (SQLAlchemy 2 async, asyncpg)."""

from __future__ import annotations

import time
from typing import Any, Final

from sqlalchemy import MetaData, event, exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

# Explicit constraint names keep Alembic downgrades deterministic.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PING_AFTER_IDLE_S: Final = 1.0
"""A pooled connection unused for longer than this is pinged before it is handed out. Within this
long of its last use a connection is as likely alive as the ones in use at that moment (a restart
that killed it fails those too), while a busy service, whose connections come back within
milliseconds, no longer pays a ping (three round trips on asyncpg) for every checkout."""

_RETURNED_AT: Final = "horde_returned_at"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def create_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    """An asyncpg engine whose idle pooled connections are pinged on checkout, so a restarted
    Postgres costs one retry, not an outage (`pool_pre_ping`, but only after `PING_AFTER_IDLE_S`)."""
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=10)
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Pool events: remember when each connection came back; ping it on checkout if it sat idle.
    A failed ping invalidates the whole pool (as `pool_pre_ping` does) and the pool retries the
    checkout on a new connection."""
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    def on_checkin(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            record.info[_RETURNED_AT] = time.monotonic()

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get(_RETURNED_AT)
        if returned is None or time.monotonic() - returned < PING_AFTER_IDLE_S:
            return  # new (just connected) or just used
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise exc.InvalidatePoolError(f"ping of an idle pooled connection failed: {error}") from error

    event.listen(pool, "checkin", on_checkin)
    event.listen(pool, "checkout", on_checkout)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
