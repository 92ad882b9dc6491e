"""Wiring of the weights service: bus handlers, loops and debug views (`docs/scoring.md` §2.6)."""

from __future__ import annotations

import structlog

from horde_common.bus import BusRouter, HandlerContext
from horde_common.bus.messages import BatchCompleted, ChainMetagraphSynced
from horde_common.service import Dependency, ServiceSpec
from horde_common.service_ports import SERVICE_PORTS
from horde_weights.runtime import WeightsRuntime, reveal_loop, weights_loop, weights_runtime, weights_view

log = structlog.get_logger(__name__)
router = BusRouter()


@router.handler("weights.batch.completed", publishes=())
async def on_batch_completed(msg: BatchCompleted, ctx: HandlerContext) -> None:
    """A batch is complete: wake the weights loop. The run itself scores it only once its cycle
    has ended, so the handler does no chain or scoring work and acks at once."""
    log.info("batch.completed", batch_id=msg.batch_id)
    ctx.dependencies.get(WeightsRuntime).wake.set()


@router.handler("weights.chain.metagraph.synced", publishes=())
async def on_metagraph_synced(msg: ChainMetagraphSynced, ctx: HandlerContext) -> None:
    """A new metagraph snapshot is stored; runs read the newest one from the database."""
    log.info("chain.metagraph.synced", block=msg.block)


SPEC = ServiceSpec(
    name="weights",
    port=SERVICE_PORTS["weights"],
    router=router,
    dependencies=[Dependency(WeightsRuntime, weights_runtime)],
    loops=[weights_loop, reveal_loop],
    debug_views={"weights": weights_view},
    needs_hotkey=True,  # signs weights: no usable key, no start (before any I/O)
)
