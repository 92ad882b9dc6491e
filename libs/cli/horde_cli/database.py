"""Database chores for the CLI: wait until Postgres answers, create the database if it is missing."""

from __future__ import annotations

import asyncio
import time

import asyncpg

# Each connect attempt may hang on a dead host; bound it so `--timeout` is honoured.
CONNECT_ATTEMPT_TIMEOUT_S = 3.0
# Between two attempts while waiting for a database that is still starting: quick enough not to add
# much to a container's start, slow enough not to spin.
RETRY_INTERVAL_S = 0.5


def _plain_dsn(url: str) -> str:
    """asyncpg wants `postgresql://`, SQLAlchemy URLs carry `+asyncpg`."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _try_connect(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=CONNECT_ATTEMPT_TIMEOUT_S)
    await conn.close()


def wait_for_database(url: str, timeout_s: float, *, server_only: bool = False) -> tuple[bool, str]:
    """Poll until a connection succeeds; returns (ok, last error).

    `server_only`: a missing database still counts as "up" (the server answered), so `migrate`
    can create it without ever needing the `postgres` maintenance database otherwise.
    """
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        try:
            asyncio.run(_try_connect(_plain_dsn(url)))
            return True, ""
        except asyncpg.InvalidCatalogNameError as exc:
            if server_only:
                return True, ""
            last = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # any failure means "not yet"
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            return False, last
        time.sleep(RETRY_INTERVAL_S)


async def _ensure(url: str) -> bool:
    dsn = _plain_dsn(url)
    try:
        await _try_connect(dsn)
        return False
    except asyncpg.InvalidCatalogNameError:
        pass
    # Only now: the migrate module imports Alembic (~0.3 s), which an existing database never needs.
    from horde_common.db.migrate import database_name, maintenance_url

    dbname = database_name(dsn)
    # make_url(...).set(database=...): the query (`?ssl=require`, ...) must reach the maintenance db too.
    conn = await asyncpg.connect(maintenance_url(dsn), timeout=CONNECT_ATTEMPT_TIMEOUT_S)
    try:
        await conn.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        await conn.close()
    return True


def ensure_database(url: str) -> bool:
    """Create the database named in `url` when it does not exist. Returns True if it was created."""
    return asyncio.run(_ensure(url))


async def prepare_database(url: str, timeout_s: float) -> tuple[bool, str]:
    """`wait_for_database(server_only=True)` then `ensure_database`, in one connect when the database
    exists (the debug command's case), on the caller's loop; returns (ok, last error)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await _ensure(url)
            return True, ""
        except Exception as exc:  # any failure means "not yet"
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            return False, last
        await asyncio.sleep(RETRY_INTERVAL_S)
