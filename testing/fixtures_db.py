"""Database fixtures: one migrated Postgres database per test module, and sessions on it.

Per module (not per session) so that a module's rows, counts and events are its own whatever order
the modules run in; the session-wide `database_url` (repo-root conftest) stays for tests that only
add rows of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db import create_engine, session_factory

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
def db_url(make_database: Callable[[], str]) -> str:
    """A new database migrated to head, for this test module."""
    from horde_common.db.migrate import upgrade

    url = make_database()
    upgrade(url)
    return url


@pytest.fixture(scope="module")
async def sessions(db_url: str) -> AsyncIterator[Sessions]:
    """Sessions on the module's database; the engine is disposed at the module's end.

    A module that empties tables before each test overrides this with a function-scoped `sessions`
    that requests this one (pytest hands an overriding fixture the one it overrides).
    """
    engine = create_engine(db_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture()
async def sf(database_url: str) -> AsyncIterator[Sessions]:
    """Sessions on the session-wide database, on an engine of this test's own."""
    engine = create_engine(database_url)
    yield session_factory(engine)
    await engine.dispose()


async def truncate(sessions: Sessions, tables: str) -> None:
    """Empty `tables` (comma-separated; `CASCADE` to follow foreign keys) in one transaction: what a
    module whose tests each start from empty tables does in its function-scoped `sessions`."""
    from sqlalchemy import text

    async with sessions.begin() as session:
        await session.execute(text(f"TRUNCATE {tables}"))
