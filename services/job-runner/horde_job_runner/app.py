"""Wiring of the job-runner: bus handlers, miner sessions and debug views."""

from __future__ import annotations

import structlog

from horde_common.bus import BusRouter, HandlerContext
from horde_common.bus.messages import (
    BatchReleased,
    BatchShardRequested,
    OrganicJobRequested,
    TrustedJobRequested,
)
from horde_common.service import ServiceSpec
from horde_common.service_ports import SERVICE_PORTS

log = structlog.get_logger(__name__)
router = BusRouter()


@router.handler("job-runner.batch.shard.requested")
async def on_batch_shard_requested(msg: BatchShardRequested, ctx: HandlerContext) -> None:
    log.info("batch.shard.requested", batch_id=msg.batch_id, shard=msg.shard_index)


@router.handler("job-runner.batch.released")
async def on_batch_released(msg: BatchReleased, ctx: HandlerContext) -> None:
    log.info("batch.released", batch_id=msg.batch_id)


@router.handler("job-runner.organic.job.requested")
async def on_organic_job_requested(msg: OrganicJobRequested, ctx: HandlerContext) -> None:
    """Organic jobs land with the facilitator issue."""
    log.info("organic.job.requested", job_uuid=str(msg.job_uuid))


@router.handler("job-runner.trusted.job.requested")
async def on_trusted_job_requested(msg: TrustedJobRequested, ctx: HandlerContext) -> None:
    """Trusted-miner jobs land with the cross-validation issue."""
    log.info("trusted.job.requested", job_uuid=str(msg.job_uuid))


SPEC = ServiceSpec(name="job-runner", port=SERVICE_PORTS["job-runner"], router=router)
