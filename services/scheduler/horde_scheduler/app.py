"""Wiring of the scheduler: bus handlers, loops and debug views.

The loops keep the dynamic config and the metagraph in the database, plan one batch per cycle,
and run the batch due (`coordinator`); the handlers are the batch's release barrier and its
completion (docs/scheduling.md §8).
"""

from __future__ import annotations

from datetime import UTC, datetime

from horde_common.bus import BusRouter, HandlerContext
from horde_common.bus.messages import (
    BatchCompleted,
    BatchReleased,
    BatchShardCompleted,
    BatchShardReady,
    BatchShardRequested,
    ChainMetagraphSynced,
)
from horde_common.db.retention import prune_bus_tables
from horde_common.service import ServiceSpec
from horde_common.service.housekeeping import housekeeping_loop
from horde_common.service_ports import SERVICE_PORTS
from horde_scheduler.batch_barrier import shard_completed, shard_ready
from horde_scheduler.coordinator import coordinator_loop
from horde_scheduler.dynamic_config_refresh import dynamic_config_view, refresh_loop
from horde_scheduler.metagraph_sync import metagraph_sync_loop, metagraph_view
from horde_scheduler.planner import planner_loop

router = BusRouter()


@router.handler("scheduler.batch.shard.ready", publishes=(BatchReleased,))
async def on_shard_ready(msg: BatchShardReady, ctx: HandlerContext) -> list[BatchReleased]:
    """A shard has its executors ready: the batch is released once every shard is."""
    return await shard_ready(ctx.session, msg, now=datetime.now(UTC))


@router.handler("scheduler.batch.shard.completed", publishes=(BatchReleased, BatchCompleted))
async def on_shard_completed(
    msg: BatchShardCompleted, ctx: HandlerContext
) -> list[BatchReleased | BatchCompleted]:
    """A shard's rows are stored (or it failed): the batch completes once every shard has."""
    return await shard_completed(ctx.session, msg, now=datetime.now(UTC))


SPEC = ServiceSpec(
    name="scheduler",
    port=SERVICE_PORTS["scheduler"],
    router=router,
    loops=[
        refresh_loop,
        metagraph_sync_loop,
        planner_loop,
        coordinator_loop,
        housekeeping_loop(prune_bus_tables),
    ],
    debug_views={"dynamic-config": dynamic_config_view, "metagraph": metagraph_view},
    needs_hotkey=True,
    publishes_outside_handlers={
        # `metagraph_sync_loop` (docs/scheduling.md §6): the message is an outbox row committed with
        # each stored snapshot.
        ChainMetagraphSynced: "`metagraph_sync_loop` (outbox row with each stored snapshot)",
        # `coordinator_loop` (docs/scheduling.md §8): outbox rows committed with the batch's rows.
        BatchShardRequested: "`coordinator_loop` (outbox row per shard, with the shard rows)",
        BatchReleased: "`coordinator_loop` (outbox row at the release deadline)",
        BatchCompleted: "`coordinator_loop` (outbox row when the last shard times out, or with no miner)",
    },
)
