"""Migrations: clean upgrade/downgrade cycles, and the models agree with the migration history."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

import horde_common.db.models  # noqa: F401
from horde_common.db import migrate
from horde_common.db.base import Base

EXPECTED_TABLES = {
    "neurons",
    "validators",
    "cycles",
    "synthetic_job_batches",
    "batch_shards",
    "synthetic_jobs",
    "miner_manifests",
    "organic_jobs",
    "facilitator_status_sent",
    "job_started_receipts",
    "job_accepted_receipts",
    "job_finished_receipts",
    "weights",
    "prompt_series",
    "solve_workloads",
    "prompt_samples",
    "prompts",
    "system_events",
    "dynamic_config",
    "processed_messages",
    "outbox",
}


def _run_sync(url: str, fn):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


def _diff(conn: Connection) -> list:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
    return compare_metadata(ctx, Base.metadata)


@pytest.fixture(scope="module")
def empty_url(make_database) -> str:  # type: ignore[no-untyped-def]
    url: str = make_database()
    return url


def test_metadata_declares_every_table() -> None:
    assert set(Base.metadata.tables) == EXPECTED_TABLES


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    assert migrate.current(empty_url) is None
    migrate.upgrade(empty_url)
    assert migrate.current(empty_url) == migrate.head()
    assert _run_sync(empty_url, _tables) == EXPECTED_TABLES

    migrate.downgrade(empty_url)
    assert migrate.current(empty_url) is None
    assert _run_sync(empty_url, _tables) == set()

    migrate.upgrade(empty_url)
    assert _run_sync(empty_url, _tables) == EXPECTED_TABLES


def test_models_match_migrations(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    assert _run_sync(empty_url, _diff) == []


def test_shared_fixture_is_at_head(database_url: str) -> None:
    assert migrate.current(database_url) == migrate.head()


async def test_migrate_callable_inside_running_loop(make_database) -> None:  # type: ignore[no-untyped-def]
    url = await asyncio.to_thread(make_database)  # the factory itself uses asyncio.run
    migrate.upgrade(url)
    assert migrate.current(url) == migrate.head()
    migrate.downgrade(url, "base")
    assert migrate.current(url) is None


def test_postgresql_scheme_is_accepted(make_database) -> None:  # type: ignore[no-untyped-def]
    url: str = make_database().replace("postgresql+asyncpg://", "postgresql://")
    migrate.upgrade(url)
    assert migrate.current(url) == migrate.head()
