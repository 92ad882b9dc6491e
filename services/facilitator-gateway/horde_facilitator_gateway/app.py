"""Wiring of the facilitator gateway: the facilitator link (a per-instance dependency and its loop),
the status-update handler, the jobs-by-status gauge, the daily pruning of the status ledger and the
`/debug/link` view (docs/organic.md, "Facilitator gateway").

Job requests from the facilitator become `organic_jobs` rows and `organic.job.requested` messages
(through the outbox, in `jobs.py`); `organic.job.status` messages from the job-runner become
`V0JobStatusUpdate` frames, each written once per message id (`ledger.py`).
"""

from __future__ import annotations

import structlog

from horde_common.bus import BusRouter, HandlerContext
from horde_common.bus.messages import OrganicJobRequested, OrganicJobStatus
from horde_common.service import Dependency, ServiceSpec
from horde_common.service.housekeeping import housekeeping_loop
from horde_common.service_ports import SERVICE_PORTS
from horde_facilitator_gateway.ledger import prune_status_sent
from horde_facilitator_gateway.link import FacilitatorLink, facilitator_link, link_loop
from horde_facilitator_gateway.report import job_counts_loop, link_view

log = structlog.get_logger(__name__)
router = BusRouter()


@router.handler("facilitator-gateway.organic.job.status", publishes=(), long_running=True)
async def on_organic_job_status(msg: OrganicJobStatus, ctx: HandlerContext) -> None:
    """Forward a job's status to the facilitator; acked only once the frame was written to an
    authenticated socket and recorded in `facilitator_status_sent`. A message already recorded, or
    older than a final status of its job already sent, is acked without sending. While the link is
    down the handler waits a bounded time, then raises so the message is retried with backoff.
    `long_running`: that wait holds no database connection."""
    outcome = await ctx.dependency(FacilitatorLink).send_status(msg)
    log.info("organic.job.status_handled", job_uuid=str(msg.job_uuid), status=msg.status, outcome=outcome)


SPEC = ServiceSpec(
    name="facilitator-gateway",
    port=SERVICE_PORTS["facilitator-gateway"],
    router=router,
    dependencies=[Dependency(FacilitatorLink, facilitator_link)],
    loops=[link_loop, job_counts_loop, housekeeping_loop(prune_status_sent)],
    debug_views={"link": link_view},
    publishes_outside_handlers={
        OrganicJobRequested: "`link_loop` (outbox row with the `organic_jobs` row of each new facilitator job)",
    },
    needs_hotkey=True,  # authenticates to the facilitator with the validator hotkey (docs/organic.md §1.3)
)
