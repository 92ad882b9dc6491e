"""Wiring of the job-runner: bus handlers, miner sessions and debug views."""

from __future__ import annotations

import structlog

from horde_common.bus import BusRouter, HandlerContext
from horde_common.bus.messages import (
    BatchReleased,
    BatchShardCompleted,
    BatchShardReady,
    BatchShardRequested,
    OrganicJobRequested,
    OrganicJobStatus,
    TrustedJobCompleted,
    TrustedJobRequested,
)
from horde_common.db.retention import prune_receipts
from horde_common.service import Dependency, ServiceSpec
from horde_common.service.housekeeping import housekeeping_loop
from horde_common.service_ports import SERVICE_PORTS
from horde_job_runner.organic.handler import OrganicRuntime, handle_organic_job_requested, organic_runtime
from horde_job_runner.synthetic.generation_pool import GenerationPool, open_generation_pool
from horde_job_runner.synthetic.handler import (
    JobRunnerRuntime,
    active_shards_view,
    handle_batch_released,
    handle_batch_shard_requested,
    job_runner_runtime,
    start_generation,
    stop_generation,
)
from horde_job_runner.trusted import handle_trusted_job_requested

log = structlog.get_logger(__name__)
router = BusRouter()


@router.handler("job-runner.batch.shard.requested", publishes=(BatchShardCompleted,), long_running=True)
async def on_batch_shard_requested(
    msg: BatchShardRequested, ctx: HandlerContext
) -> list[BatchShardCompleted]:
    """Run one synthetic shard (§3.2–§3.12) and report `batch.shard.completed`.

    `long_running`: a shard runs for minutes, so no database connection is held for it (the shard's
    lease in `batch_shards` says who runs it; see `synthetic/handler.py`).
    """
    return await handle_batch_shard_requested(msg, ctx)


@router.handler("job-runner.batch.released", publishes=())
async def on_batch_released(msg: BatchReleased, ctx: HandlerContext) -> None:
    """The scheduler's cross-shard barrier: send every job request of the batch now."""
    await handle_batch_released(msg, ctx)


@router.handler("job-runner.organic.job.requested", publishes=(), long_running=True)
async def on_organic_job_requested(msg: OrganicJobRequested, ctx: HandlerContext) -> None:
    """Run one facilitator job on its miner(s) (docs/organic.md, "Running organic jobs"); its statuses
    go out through the outbox with each row update, not as this handler's return."""
    await handle_organic_job_requested(msg, ctx)


@router.handler("job-runner.trusted.job.requested", publishes=(TrustedJobCompleted,), long_running=True)
async def on_trusted_job_requested(msg: TrustedJobRequested, ctx: HandlerContext) -> TrustedJobCompleted:
    """Run a cross-validator job on the trusted miner and report its outcome (docs/crossval.md §9.2)."""
    return await handle_trusted_job_requested(msg, ctx)


SPEC = ServiceSpec(
    name="job-runner",
    port=SERVICE_PORTS["job-runner"],
    router=router,
    # The pool first: the runtime takes it, and it closes after the runtime (reverse order).
    dependencies=[
        Dependency(GenerationPool, open_generation_pool),
        Dependency(JobRunnerRuntime, job_runner_runtime),
        Dependency(OrganicRuntime, organic_runtime),
    ],
    publishes_outside_handlers={
        # Published by the running shard itself (not its handler's return): the scheduler's release
        # barrier must hear it while the handler is still waiting for `batch.released`.
        BatchShardReady: "`run_shard` (a direct publish once the shard's executors are ready)",
        OrganicJobStatus: "`handle_organic_job_requested` (outbox rows with each attempt's `organic_jobs` update)",
    },
    on_start=start_generation,
    on_stop=stop_generation,
    needs_hotkey=True,  # signs job requests and receipts: no usable key, no start (before any I/O)
    loops=[housekeeping_loop(prune_receipts)],
    debug_views={"synthetic": active_shards_view},
)
