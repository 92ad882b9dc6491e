"""Wiring of the facilitator gateway: bus handlers, the facilitator link loop and debug views.

The facilitator link arrives with its issue; until then status updates are acknowledged and logged.
"""

from __future__ import annotations

import structlog

from horde_common.bus import BusRouter, HandlerContext
from horde_common.bus.messages import OrganicJobStatus
from horde_common.service import ServiceSpec
from horde_common.service_ports import SERVICE_PORTS

log = structlog.get_logger(__name__)
router = BusRouter()


@router.handler("facilitator-gateway.organic.job.status", publishes=())
async def on_organic_job_status(msg: OrganicJobStatus, ctx: HandlerContext) -> None:
    """An organic job changed state; forwarding to the facilitator lands with the organic issue."""
    log.info("organic.job.status", job_uuid=str(msg.job_uuid), status=msg.status)


SPEC = ServiceSpec(name="facilitator-gateway", port=SERVICE_PORTS["facilitator-gateway"], router=router)
