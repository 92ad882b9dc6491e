"""Delete rows that have outlived their purpose, so tables stay small on a validator that runs for years.

Each owning service prunes its own tables on a daily loop: the scheduler the bus bookkeeping, the
job-runner the receipts (the reference kept receipts for 2 days).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, delete
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.db.models import (
    JobAcceptedReceipt,
    JobFinishedReceipt,
    JobStartedReceipt,
    OutboxMessage,
    ProcessedMessage,
)

# Idempotency rows must outlive any redelivery; RabbitMQ redelivers within minutes, a week is ample.
PROCESSED_MESSAGES_KEEP = timedelta(days=7)
# Published outbox rows are only kept for debugging a recent incident.
PUBLISHED_OUTBOX_KEEP = timedelta(days=1)
# The reference deleted its own receipts after 2 days (docs/miner-protocol.md §2.4.5); miners keep theirs for
# 24 h.
RECEIPTS_KEEP = timedelta(days=2)


async def prune_bus_tables(session: AsyncSession, now: datetime) -> dict[str, int]:
    """Old idempotency rows and published outbox rows; never an unpublished outbox row."""
    processed = await session.execute(
        delete(ProcessedMessage).where(ProcessedMessage.processed_at < now - PROCESSED_MESSAGES_KEEP)
    )
    outbox = await session.execute(
        delete(OutboxMessage).where(
            and_(
                OutboxMessage.published_at.is_not(None),
                OutboxMessage.published_at < now - PUBLISHED_OUTBOX_KEEP,
            )
        )
    )
    return {"processed_messages": _count(processed), "outbox": _count(outbox)}


async def prune_receipts(session: AsyncSession, now: datetime) -> dict[str, int]:
    """The validator's own receipt copies older than `RECEIPTS_KEEP`."""
    out: dict[str, int] = {}
    for model in (JobStartedReceipt, JobAcceptedReceipt, JobFinishedReceipt):
        result = await session.execute(delete(model).where(model.timestamp < now - RECEIPTS_KEEP))
        out[model.__tablename__] = _count(result)
    return out


def _count(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
