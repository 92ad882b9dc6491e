"""The organic jobs by status, for `/metrics` and `GET /debug/link` (docs/organic.md, "Facilitator
gateway": metrics).

The gauge `horde_facilitator_jobs_by_status` is refreshed by a loop with one cheap `GROUP BY` every
`JOB_COUNTS_INTERVAL_S`, not at scrape time: an OpenTelemetry gauge callback is synchronous and
cannot query the database. The debug view queries afresh, as it is read by a person, rarely.
"""

from __future__ import annotations

from typing import Any, Final

import structlog

from horde_common.db.models.enums import JobStatus
from horde_common.service import ServiceContext
from horde_facilitator_gateway.ledger import count_jobs_by_status
from horde_facilitator_gateway.link import FacilitatorLink

log = structlog.get_logger(__name__)

JOB_COUNTS_INTERVAL_S: Final = 15.0
"""A scrape every 15-60 s is usual; one small aggregate this often costs the database nothing."""


async def jobs_by_status(ctx: ServiceContext) -> dict[str, int]:
    """Every job status with its `organic_jobs` count, 0 for a status no row has (so the gauge of a
    status that emptied drops to 0 rather than keeping its last value)."""
    counts = await count_jobs_by_status(ctx.sessions)
    return {status.value: 0 for status in JobStatus} | counts


async def job_counts_loop(ctx: ServiceContext) -> None:
    """Refresh the gauge until the service stops. A failed query is logged and retried on the next
    tick: a database hiccup must not stop the loop (a dead loop fails `/readyz`)."""
    link = ctx.dependency(FacilitatorLink)
    while True:
        try:
            link.metrics.job_counts(await jobs_by_status(ctx))
        except Exception as exc:
            log.warning("facilitator.job_counts_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        if await ctx.wait_stop(JOB_COUNTS_INTERVAL_S):
            return


async def link_view(ctx: ServiceContext) -> dict[str, Any]:
    """`GET /debug/link`: connection state, counts, the last error and the organic jobs by status."""
    link = ctx.dependencies.find(FacilitatorLink)
    if link is None:
        return {"state": "not started"}
    state = link.debug_state()
    try:
        counts = await jobs_by_status(ctx)
    except Exception as exc:
        state["jobs_by_status"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        return state
    link.metrics.job_counts(counts)
    state["jobs_by_status"] = counts
    return state
