"""Wiring of the scheduler: bus handlers, loops and debug views.

The coordinator logic (cycles, when-to-run, shard barrier) arrives with its issue; until then the
handlers acknowledge and log, so the queues are declared and drained.
"""

from __future__ import annotations

import structlog

from horde_common.bus import BusRouter, HandlerContext
from horde_common.bus.messages import BatchShardCompleted, BatchShardReady, ChainMetagraphSynced
from horde_common.db.retention import prune_bus_tables
from horde_common.service import ServiceSpec
from horde_common.service.housekeeping import housekeeping_loop
from horde_common.service_ports import SERVICE_PORTS
from horde_scheduler.dynamic_config_refresh import dynamic_config_view, refresh_loop
from horde_scheduler.metagraph_sync import metagraph_sync_loop, metagraph_view

log = structlog.get_logger(__name__)
router = BusRouter()


@router.handler("scheduler.batch.shard.ready", publishes=())
async def on_shard_ready(msg: BatchShardReady, ctx: HandlerContext) -> None:
    """A shard has its executors ready; the release barrier lands with the scheduler issue."""
    log.info("batch.shard.ready", batch_id=msg.batch_id, shard=msg.shard_index)


@router.handler("scheduler.batch.shard.completed", publishes=())
async def on_shard_completed(msg: BatchShardCompleted, ctx: HandlerContext) -> None:
    """A shard's rows are persisted; batch completion lands with the scheduler issue."""
    log.info("batch.shard.completed", batch_id=msg.batch_id, shard=msg.shard_index)


SPEC = ServiceSpec(
    name="scheduler",
    port=SERVICE_PORTS["scheduler"],
    router=router,
    loops=[refresh_loop, metagraph_sync_loop, housekeeping_loop(prune_bus_tables)],
    debug_views={"dynamic-config": dynamic_config_view, "metagraph": metagraph_view},
    publishes_outside_handlers={
        # `metagraph_sync_loop` (docs/scheduling.md §6): the message is an outbox row committed with
        # each stored snapshot.
        ChainMetagraphSynced: "`metagraph_sync_loop` (outbox row with each stored snapshot)",
    },
)
