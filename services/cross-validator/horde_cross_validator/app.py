"""Wiring of the cross-validator: bus handlers, prompt-generation loops and debug views.

Prompt series and trusted answers arrive with the cross-validation issue; until then trusted-job
outcomes are acknowledged and logged.
"""

from __future__ import annotations

import structlog

from horde_common.bus import BusRouter, HandlerContext
from horde_common.bus.messages import TrustedJobCompleted
from horde_common.service import ServiceSpec
from horde_common.service_ports import SERVICE_PORTS

log = structlog.get_logger(__name__)
router = BusRouter()


@router.handler("cross-validator.trusted.job.completed", publishes=())
async def on_trusted_job_completed(msg: TrustedJobCompleted, ctx: HandlerContext) -> None:
    """A trusted-miner job ended; storing its answers lands with the cross-validation issue."""
    log.info("trusted.job.completed", job_uuid=str(msg.job_uuid), success=msg.success)


SPEC = ServiceSpec(name="cross-validator", port=SERVICE_PORTS["cross-validator"], router=router)
