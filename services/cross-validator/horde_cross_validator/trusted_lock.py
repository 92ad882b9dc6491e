"""One trusted-miner job at a time, across every cross-validator replica (docs/crossval.md §9.2).

Generation and answering each take a transaction-scoped PostgreSQL advisory lock without waiting and
hold its transaction for the whole job: the trusted miner has one A6000 pool, and a second job
beside a running one would only time out. A replica that finds the lock taken does nothing
(generation) or stops its loop (answering). The lock goes with the transaction, so a replica that
dies mid-job frees it with its connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ["SAMPLING_LOCK_KEY", "TRUSTED_MINER_LOCK_KEY", "try_advisory_lock"]

TRUSTED_MINER_LOCK_KEY: Final = 3
"""The reference's key for the trusted miner (1 and 2 were its weight setting and scheduling; the
other services here use spelled-out 64-bit keys, which never collide with 3)."""

SAMPLING_LOCK_KEY: Final = 0x6C6C_6D73_616D_706C  # "llmsampl"
"""Sampling runs one at a time too: two replicas would both top the pool up to the target."""


@contextlib.asynccontextmanager
async def try_advisory_lock(
    sessions: async_sessionmaker[AsyncSession], key: int = TRUSTED_MINER_LOCK_KEY
) -> AsyncIterator[bool]:
    """Yield whether the lock was taken; it is held (with its open transaction) until the block ends."""
    async with sessions() as session, session.begin():
        held = await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key})
        yield bool(held)
