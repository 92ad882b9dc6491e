"""Which task holds each checked-out connection of an engine's pool: the witness of tests that a
long-running handler holds no database connection while it runs."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


class Checkouts:
    """Which task holds each checked-out connection of an engine's pool (from the pool's events)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.holders: dict[int, asyncio.Task[Any] | None] = {}
        event.listen(engine.sync_engine.pool, "checkout", self._checkout)
        event.listen(engine.sync_engine.pool, "checkin", self._checkin)

    def _checkout(self, dbapi_conn: Any, record: Any, proxy: Any) -> None:
        self.holders[id(dbapi_conn)] = asyncio.current_task()

    def _checkin(self, dbapi_conn: Any, record: Any) -> None:
        self.holders.pop(id(dbapi_conn), None)

    def held_by_current_task(self) -> int:
        task = asyncio.current_task()
        return sum(1 for holder in self.holders.values() if holder is task)
