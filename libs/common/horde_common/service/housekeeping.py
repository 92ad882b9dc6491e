"""A daily loop that runs a service's pruning function in its own transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.service.context import LoopFn, ServiceContext

log = structlog.get_logger(__name__)

# Daily, as the reference's cleanup tasks; a restart runs it once at start as well.
HOUSEKEEPING_INTERVAL_S = 24 * 3600.0

Prune = Callable[[AsyncSession, datetime], Awaitable[dict[str, int]]]


def housekeeping_loop(*prunes: Prune) -> LoopFn:
    """A `ServiceSpec.loops` entry that runs every `prune` once a day and logs what it deleted."""

    async def housekeeping(ctx: ServiceContext) -> None:
        while True:
            async with ctx.sessions() as session, session.begin():
                deleted: dict[str, int] = {}
                for prune in prunes:
                    deleted.update(await prune(session, datetime.now(UTC)))
            log.info("housekeeping done", deleted=deleted)
            if await ctx.wait_stop(HOUSEKEEPING_INTERVAL_S):
                return

    return housekeeping
