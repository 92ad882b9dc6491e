"""Run the Alembic migrations of `horde_common.db.migrations` programmatically.

The functions are synchronous (for the CLI, tests and start-up code). The migration environment is
async (asyncpg) and drives its own event loop with `asyncio.run`; when the calling thread already
runs an event loop, the work is moved to a short-lived worker thread so the two loops never meet.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

T = TypeVar("T")


def normalize_url(url: str) -> str:
    """Force the asyncpg driver on a postgres URL (`postgresql://`, `postgres://` or already asyncpg)."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def maintenance_url(url: str, database: str = "postgres") -> str:
    """`url` switched to another database on the same server (default: the `postgres` maintenance one).

    Only the database changes: driver, credentials, host, port and query parameters such as
    `?ssl=require` survive, because a managed server that requires TLS refuses the bare URL. Rendered
    with its password, since the result is a connection string, not a log line.
    """
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def database_name(url: str) -> str | None:
    """The database a URL names (without its query parameters), or None when it names none."""
    return make_url(url).database


def _resolve_url(url: str | None) -> str:
    if url is None:
        from horde_common.config import get_settings

        url = get_settings().database_url
    return normalize_url(url)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic `Config` pointing at the packaged migrations; the URL travels in `attributes`
    (not the ini options, whose `%` interpolation would mangle passwords)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = _resolve_url(url)
    return cfg


def _off_loop(fn: Callable[[], T]) -> T:
    """Call `fn` here, or in a worker thread when this thread is running an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="alembic") as pool:
        return pool.submit(fn).result()


def upgrade(url: str | None = None, rev: str = "head") -> None:
    """Migrate the database at `url` (default: settings) up to `rev`."""
    cfg = alembic_config(url)
    _off_loop(lambda: command.upgrade(cfg, rev))


def downgrade(url: str | None = None, rev: str = "base") -> None:
    """Migrate the database at `url` (default: settings) down to `rev`."""
    cfg = alembic_config(url)
    _off_loop(lambda: command.downgrade(cfg, rev))


def current(url: str | None = None) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    resolved = _resolve_url(url)

    def _get(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async def _run() -> str | None:
        engine = create_async_engine(resolved, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(_get)
        finally:
            await engine.dispose()

    return _off_loop(lambda: asyncio.run(_run()))


def head() -> str | None:
    """The head revision of the packaged migration scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(
        alembic_config("postgresql+asyncpg://unused/unused")
    ).get_current_head()
