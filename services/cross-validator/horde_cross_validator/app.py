"""Wiring of the cross-validator: the prompt loops, the trusted-job outcome handler and the debug
view (docs/crossval.md §9)."""

from __future__ import annotations

import structlog

from horde_common.bus import BusRouter, HandlerContext
from horde_common.bus.messages import TrustedJobCompleted, TrustedJobRequested
from horde_common.service import Dependency, ServiceSpec
from horde_common.service_ports import SERVICE_PORTS
from horde_cross_validator.loops import prompt_loops
from horde_cross_validator.runtime import CrossValidatorRuntime, cross_validator_runtime
from horde_cross_validator.trusted_jobs import notify_completed
from horde_cross_validator.views import crossval_view

log = structlog.get_logger(__name__)
router = BusRouter()


@router.handler("cross-validator.trusted.job.completed", publishes=())
async def on_trusted_job_completed(msg: TrustedJobCompleted, ctx: HandlerContext) -> None:
    """Hand a trusted job's outcome to the replica waiting for it (a NOTIFY that commits with this
    delivery: docs/crossval.md §9.2)."""
    log.info("trusted.job.completed", job_uuid=str(msg.job_uuid), success=msg.success)
    await notify_completed(ctx.session, msg)


SPEC = ServiceSpec(
    name="cross-validator",
    port=SERVICE_PORTS["cross-validator"],
    router=router,
    dependencies=[Dependency(CrossValidatorRuntime, cross_validator_runtime)],
    loops=prompt_loops(),
    debug_views={"crossval": crossval_view},
    publishes_outside_handlers={
        TrustedJobRequested: "`generation_loop`, `answering_loop` (a direct publish while the trusted-miner lock is held)",
    },
)
