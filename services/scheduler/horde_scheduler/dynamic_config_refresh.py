"""Keep the `dynamic_config` table fresh from `DYNAMIC_CONFIG_SOURCE` (JSON files or URLs).

The scheduler owns the table; every service reads it through `DynamicConfig.load`. A bad source
keeps the previous values (the refresh validates everything before writing) and records an event.
"""

from __future__ import annotations

from typing import Any

import structlog

from horde_common.dynamic_config import DynamicConfig, DynamicConfigError, refresh_from_sources
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.service import ServiceContext
from horde_common.telemetry import record_event_detached

log = structlog.get_logger(__name__)

# The reference refreshed every 5 minutes; readers cache for the same time, so faster buys nothing.
REFRESH_INTERVAL_S = 300.0


def configured_sources(raw: str | None) -> list[str]:
    """`DYNAMIC_CONFIG_SOURCE` is a comma-separated list; later sources win on conflicts."""
    return [s.strip() for s in (raw or "").split(",") if s.strip()]


async def refresh_once(ctx: ServiceContext) -> list[str]:
    """One refresh; returns the keys written (empty when no source is configured or it failed)."""
    sources = configured_sources(ctx.settings.DYNAMIC_CONFIG_SOURCE)
    if not sources:
        return []
    try:
        async with ctx.sessions() as session, session.begin():
            return await refresh_from_sources(session, sources)
    except DynamicConfigError as exc:
        log.warning("dynamic config refresh failed; keeping the previous values", error=str(exc))
        await record_event_detached(
            ctx.sessions,
            SystemEventType.VALIDATOR_FAILURE,
            SystemEventSubtype.GENERIC_ERROR,
            f"dynamic config refresh failed: {exc}",
            {"sources": sources},
        )
        return []


async def refresh_loop(ctx: ServiceContext) -> None:
    """Refresh at start, then every `REFRESH_INTERVAL_S` until the service stops."""
    while True:
        await refresh_once(ctx)
        if await ctx.wait_stop(REFRESH_INTERVAL_S):
            return


async def dynamic_config_view(ctx: ServiceContext) -> dict[str, Any]:
    """`/debug/dynamic-config`: the DYNAMIC_* values in effect now."""
    async with ctx.sessions() as session:
        config = await DynamicConfig.load(session, max_age_s=0)
    return {
        "sources": configured_sources(ctx.settings.DYNAMIC_CONFIG_SOURCE),
        "values": config.values,
    }
