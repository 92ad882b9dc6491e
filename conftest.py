"""Test fixtures shared by every package: a private Postgres database and RabbitMQ vhost per run.

Tests talk to the real servers on this machine. Each test session gets its own database and vhost,
so parallel sessions (and agents) never see each other's rows or queues.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_BASE = os.environ.get("TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
RUN_ID = uuid.uuid4().hex[:8]

# Shared fixtures of every package's tests, in modules of the root-level `testing` package (on the
# path through `pythonpath` in pyproject.toml).
pytest_plugins = ["testing.fixtures_db", "testing.fixtures_s3", "testing.fixtures_bus"]


def _run(coro: object) -> None:
    """`asyncio.run`, also from inside a running loop (async tests call the factories)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]


def _pg_url(dbname: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{dbname}".replace("postgresql://", "postgresql+asyncpg://", 1)


async def _create_db(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_db(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def make_database() -> Iterator[object]:
    """Factory: `make_database()` -> URL of a new empty database, dropped at session end."""
    created: list[str] = []

    def make() -> str:
        name = f"horde_test_{RUN_ID}_{len(created)}"
        _run(_create_db(name))
        created.append(name)
        return _pg_url(name)

    yield make
    for name in created:
        _run(_drop_db(name))


@pytest.fixture(scope="session")
def database_url(make_database) -> str:  # type: ignore[no-untyped-def]
    """A database migrated to head, shared by the session."""
    from horde_common.db.migrate import upgrade

    url: str = make_database()
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A private RabbitMQ vhost for the session, deleted at the end."""
    vhost = f"horde_test_{RUN_ID}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    yield f"{AMQP_BASE}/{vhost}"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True)


@pytest.fixture()
def settings_env(database_url: str, amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Point `get_settings()` at the test database and vhost."""
    from horde_common.config import get_settings

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("AMQP_URL", amqp_url)
    monkeypatch.setenv("DEBUG_TOKEN", "test-debug-token")
    get_settings.cache_clear()
    yield  # type: ignore[misc]
    get_settings.cache_clear()
