"""Wiring of the weights service: bus handlers, loops and debug views.

Scoring and weight setting arrive with their issue; until then the handlers acknowledge and log.
"""

from __future__ import annotations

import structlog

from horde_common.bus import BusRouter, HandlerContext
from horde_common.bus.messages import BatchCompleted, ChainMetagraphSynced
from horde_common.service import ServiceSpec
from horde_common.service_ports import SERVICE_PORTS

log = structlog.get_logger(__name__)
router = BusRouter()


@router.handler("weights.batch.completed", publishes=())
async def on_batch_completed(msg: BatchCompleted, ctx: HandlerContext) -> None:
    """A batch is complete; it is scored once its cycle ends (weights issue)."""
    log.info("batch.completed", batch_id=msg.batch_id)


@router.handler("weights.chain.metagraph.synced", publishes=())
async def on_metagraph_synced(msg: ChainMetagraphSynced, ctx: HandlerContext) -> None:
    """A new metagraph snapshot is stored; the weights issue maps hotkeys to uids with it."""
    log.info("chain.metagraph.synced", block=msg.block)


SPEC = ServiceSpec(name="weights", port=SERVICE_PORTS["weights"], router=router)
