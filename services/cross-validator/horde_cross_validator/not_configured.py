"""Without a trusted miner the prompt tasks only say so, once a day (docs/crossval.md §7.1, §9.1).

Generation and answering share one suppression: the newest `TRUSTED_MINER_NOT_CONFIGURED` of either
task decides. The check and the insert run under a transaction-scoped advisory lock, so two
replicas (or the two loops) that both find it due still write one event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db.models import SystemEvent
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.telemetry.events import SystemEventRecord, record_events_bulk
from horde_cross_validator.planning import should_report_trusted_miner_not_configured

__all__ = ["NOT_CONFIGURED_LOCK_KEY", "report_not_configured"]

NOT_CONFIGURED_LOCK_KEY: Final = 0x6E6F_7463_6F6E_6667  # "notconfg"
"""Serialises the once-a-day check and insert (waited for: it is held for milliseconds)."""

TASKS: Final = (SystemEventType.LLM_PROMPT_GENERATION, SystemEventType.LLM_PROMPT_ANSWERING)


async def report_not_configured(
    sessions: async_sessionmaker[AsyncSession], task: SystemEventType, now: datetime
) -> bool:
    """Record the event for `task` unless either task recorded one in the last 24 h; True if written."""
    async with sessions() as session, session.begin():
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": NOT_CONFIGURED_LOCK_KEY})
        last = await session.scalar(
            select(func.max(SystemEvent.timestamp)).where(
                SystemEvent.subtype == SystemEventSubtype.TRUSTED_MINER_NOT_CONFIGURED,
                SystemEvent.type.in_([str(t) for t in TASKS]),
            )
        )
        if not should_report_trusted_miner_not_configured(last, now):
            return False
        event = SystemEventRecord(
            task, SystemEventSubtype.TRUSTED_MINER_NOT_CONFIGURED, "trusted miner is not configured", {}, now
        )
        await record_events_bulk(session, [event])
    return True
