"""Turning a facilitator job request into an `organic_jobs` row and an `organic.job.requested`
message, in one transaction (docs/organic.md, "Facilitator gateway").

The row is the idempotency record: its `job_uuid` is unique, the insert does nothing on a conflict,
and the message is staged only when the row is new, so a request the facilitator sends twice (after
a reconnect, say) runs once. The message id is derived from the job uuid too, so even a replayed
outbox row is deduplicated by its consumer.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Final, TypeAlias

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.messages import OrganicJobRequested
from horde_common.bus.outbox import add_to_outbox
from horde_common.db.models.enums import JobStatus, OrganicJobSource
from horde_common.db.models.organic import OrganicJob
from horde_common.protocol.facilitator import V0JobRequest, V1JobRequest, V2JobRequest

JOB_DESCRIPTION: Final = "User job from facilitator"
"""`organic_jobs.job_description` of facilitator jobs, as the original wrote it."""

_MESSAGE_NAMESPACE: Final = uuid.UUID("5b0c2f8e-6f2a-4d33-9a53-0f1d2d9a7c41")
"""Namespace of the deterministic `organic.job.requested` message ids (one per job uuid)."""

AnyJobRequest: TypeAlias = V0JobRequest | V1JobRequest | V2JobRequest


class StoreOutcome(StrEnum):
    STORED = "stored"  # new row + outbox message committed
    DUPLICATE = "duplicate"  # a row with this uuid exists: not run again
    BAD_UUID = "bad_uuid"  # the request's uuid is not a UUID: no row can hold it


def requested_message(request: AnyJobRequest, job_uuid: uuid.UUID) -> OrganicJobRequested:
    """The bus message for a stored request; V2 names no miner (the job-runner picks one)."""
    return OrganicJobRequested(
        message_id=uuid.uuid5(_MESSAGE_NAMESPACE, str(job_uuid)),
        job_uuid=job_uuid,
        miner_hotkey=getattr(request, "miner_hotkey", ""),
        executor_class=str(request.executor_class),
        request=request.model_dump(mode="json"),
    )


async def store_job_request(
    sessions: async_sessionmaker[AsyncSession], request: AnyJobRequest
) -> StoreOutcome:
    """Insert the row and stage the message in one transaction; a known uuid changes nothing."""
    try:
        job_uuid = uuid.UUID(request.uuid)
    except ValueError:
        return StoreOutcome.BAD_UUID
    message = requested_message(request, job_uuid)
    async with sessions() as session, session.begin():
        inserted = await session.scalar(
            pg_insert(OrganicJob)
            .values(
                job_uuid=job_uuid,
                source=OrganicJobSource.FACILITATOR,
                miner_hotkey=message.miner_hotkey,
                executor_class=message.executor_class,
                status=JobStatus.PENDING,
                job_description=JOB_DESCRIPTION,
                request=message.request,
            )
            .on_conflict_do_nothing(index_elements=[OrganicJob.job_uuid])
            .returning(OrganicJob.id)
        )
        if inserted is None:
            return StoreOutcome.DUPLICATE
        await add_to_outbox(session, message)
    return StoreOutcome.STORED
