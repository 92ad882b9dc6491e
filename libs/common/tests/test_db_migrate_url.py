"""`horde migrate` reaches the `postgres` maintenance database with the operator's URL intact."""

from __future__ import annotations

import asyncio
import os
import uuid
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from horde_common.db.migrate import database_name, maintenance_url

# The same server the root conftest creates its test databases on.
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://horde:p%40ss@db.example.com:5433/horde?ssl=require",
        "postgresql+asyncpg://horde:pw@db.example.com/horde?ssl=require&application_name=horde-migrate",
        "postgresql://horde@/horde?host=/var/run/postgresql&sslmode=verify-full",
    ],
)
def test_maintenance_url_keeps_everything_but_the_database(url: str) -> None:
    before, after = urlsplit(url), urlsplit(maintenance_url(url))
    assert after.path == "/postgres"
    assert parse_qs(after.query) == parse_qs(before.query), "query parameters such as ?ssl=require survive"
    assert (after.scheme, after.username, after.password, after.hostname, after.port) == (
        before.scheme,
        before.username,
        before.password,
        before.hostname,
        before.port,
    )


def test_maintenance_url_can_name_another_database() -> None:
    assert maintenance_url("postgresql://u@h/horde?ssl=require", "template1") == (
        "postgresql://u@h/template1?ssl=require"
    )


def test_database_name_ignores_the_query() -> None:
    assert database_name("postgresql://u:pw@h:5432/horde?ssl=require") == "horde"
    assert database_name("postgresql://u@h") is None


async def test_migrate_creates_a_missing_database_through_a_url_with_query_parameters() -> None:
    """The real `horde migrate` step against Postgres with a URL that carries a query (`?user=`,
    `?application_name=`): both the probe and the maintenance connection accept it."""
    from horde_cli.database import ensure_database

    name = f"horde_test_query_{uuid.uuid4().hex[:8]}"
    server = urlsplit(PG_ADMIN_URL)
    url = f"postgresql://{server.hostname}:{server.port or 5432}/{name}?user={server.username}&application_name=horde-migrate"
    try:
        assert await asyncio.to_thread(ensure_database, url) is True
        assert await asyncio.to_thread(ensure_database, url) is False
    finally:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
