"""Reads of an organic job's database side, shared by the job-runner's organic tests: the statuses
staged in the outbox (what the gateway will forward) and the `organic_jobs` row."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db.models.bus import OutboxMessage
from horde_common.db.models.organic import OrganicJob


async def statuses(sessions: async_sessionmaker[AsyncSession], job_uuid: uuid.UUID) -> list[dict[str, Any]]:
    """The job's `organic.job.status` bodies in the outbox, in the order they were staged."""
    async with sessions() as session:
        rows = await session.scalars(
            select(OutboxMessage.body)
            .where(OutboxMessage.routing_key == "organic.job.status")
            .where(OutboxMessage.body["job_uuid"].astext == str(job_uuid))
            .order_by(OutboxMessage.id)
        )
        return list(rows)


async def job_row(sessions: async_sessionmaker[AsyncSession], job_uuid: uuid.UUID) -> OrganicJob:
    """The job's row (it must exist)."""
    async with sessions() as session:
        row = await session.scalar(select(OrganicJob).where(OrganicJob.job_uuid == job_uuid))
        assert row is not None
        return row
