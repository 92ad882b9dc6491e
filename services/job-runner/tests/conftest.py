"""Fixtures shared by the job-runner's tests: one migrated database per test module, and its store.

Per module (not per session) so that each module's batches, "previous batch" counts and events
are its own, whatever order the modules run in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from horde_common.db import create_engine, session_factory
from horde_common.db.migrate import upgrade
from horde_job_runner.synthetic.persistence import BatchStore


@pytest.fixture(scope="module")
def db_url(make_database) -> str:  # type: ignore[no-untyped-def]
    """A new database migrated to head, for this test module."""
    url: str = make_database()
    upgrade(url)
    return url


@pytest.fixture(scope="module")
async def store(db_url: str) -> AsyncIterator[BatchStore]:
    """The module's `BatchStore`, on an engine disposed at the module's end."""
    engine = create_engine(db_url)
    yield BatchStore(session_factory(engine))
    await engine.dispose()
