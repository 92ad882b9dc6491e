"""Wiring of the job-runner: bus handlers, miner sessions and debug views."""

from __future__ import annotations

import structlog

from horde_common.bus import BusMessage, BusRouter, HandlerContext
from horde_common.bus.messages import (
    BatchReleased,
    BatchShardRequested,
    OrganicJobRequested,
    TrustedJobRequested,
)
from horde_common.db.retention import prune_receipts
from horde_common.service import ServiceSpec
from horde_common.service.housekeeping import housekeeping_loop
from horde_common.service_ports import SERVICE_PORTS
from horde_job_runner.synthetic.handler import (
    active_shards_view,
    handle_batch_released,
    handle_batch_shard_requested,
    install_runtime_from_service,
    uninstall_runtime_from_service,
)

log = structlog.get_logger(__name__)
router = BusRouter()


@router.handler("job-runner.batch.shard.requested")
async def on_batch_shard_requested(msg: BatchShardRequested, ctx: HandlerContext) -> list[BusMessage]:
    """Run one synthetic shard (§3.2–§3.12) and report `batch.shard.completed`."""
    return await handle_batch_shard_requested(msg, ctx)


@router.handler("job-runner.batch.released")
async def on_batch_released(msg: BatchReleased, ctx: HandlerContext) -> list[BusMessage]:
    """The scheduler's cross-shard barrier: send every job request of the batch now."""
    return await handle_batch_released(msg, ctx)


@router.handler("job-runner.organic.job.requested")
async def on_organic_job_requested(msg: OrganicJobRequested, ctx: HandlerContext) -> None:
    """Organic jobs land with the facilitator issue."""
    log.info("organic.job.requested", job_uuid=str(msg.job_uuid))


@router.handler("job-runner.trusted.job.requested")
async def on_trusted_job_requested(msg: TrustedJobRequested, ctx: HandlerContext) -> None:
    """Trusted-miner jobs land with the cross-validation issue."""
    log.info("trusted.job.requested", job_uuid=str(msg.job_uuid))


SPEC = ServiceSpec(
    name="job-runner",
    port=SERVICE_PORTS["job-runner"],
    router=router,
    on_start=install_runtime_from_service,
    on_stop=uninstall_runtime_from_service,
    needs_hotkey=True,  # signs job requests and receipts: no usable key, no start (before any I/O)
    loops=[housekeeping_loop(prune_receipts)],
    debug_views={"synthetic": active_shards_view},
)
