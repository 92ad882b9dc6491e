"""`GET /debug/crossval`: how far the prompt pipeline is (docs/crossval.md §9.6).

Counts of series, workloads and samples by state, and the newest trusted-miner job as its events
tell it (every job ends in a SUCCESS or FAILURE event of its task). `horde crossval status` prints
the same numbers from its own query.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.db.models import PromptSample, PromptSeries, SolveWorkload, SystemEvent
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.service import ServiceContext
from horde_cross_validator.runtime import CrossValidatorRuntime

__all__ = ["crossval_status", "crossval_view"]

TRUSTED_JOB_TASKS: Final = (SystemEventType.LLM_PROMPT_GENERATION, SystemEventType.LLM_PROMPT_ANSWERING)
# The events a trusted-miner job ends with (generation: SUCCESS or FAILURE; answering: the
# per-workload FAILURE, missing answers, a failed download, or the run's SUCCESS summary).
JOB_END_SUBTYPES: Final = (
    SystemEventSubtype.SUCCESS,
    SystemEventSubtype.FAILURE,
    SystemEventSubtype.LLM_PROMPT_ANSWERS_MISSING,
    SystemEventSubtype.ERROR_DOWNLOADING_FROM_S3,
)


async def crossval_status(session: AsyncSession) -> dict[str, Any]:
    """The pipeline's counts and its last trusted-miner job event (None before the first)."""
    series = await session.scalar(select(func.count()).select_from(PromptSeries)) or 0
    workloads = (
        await session.execute(
            select(func.count(), func.count().filter(SolveWorkload.finished_at.is_(None))).select_from(
                SolveWorkload
            )
        )
    ).one()
    # used: linked to a stored job; taken: reserved by a shard, not linked (a shard still running,
    # or one that crashed: never offered again); ready/unanswered: neither (docs/crossval.md).
    linked = PromptSample.synthetic_job_id.is_not(None)
    free = and_(PromptSample.synthetic_job_id.is_(None), PromptSample.taken_at.is_(None))
    samples = (
        await session.execute(
            select(
                func.count().filter(linked),
                func.count().filter(free, SolveWorkload.finished_at.is_not(None)),
                func.count().filter(free, SolveWorkload.finished_at.is_(None)),
                func.count().filter(
                    PromptSample.synthetic_job_id.is_(None), PromptSample.taken_at.is_not(None)
                ),
            )
            .select_from(PromptSample)
            .join(SolveWorkload, SolveWorkload.id == PromptSample.workload_id)
        )
    ).one()
    last = (
        await session.execute(
            select(SystemEvent.type, SystemEvent.subtype, SystemEvent.timestamp, SystemEvent.long_description)
            .where(
                SystemEvent.type.in_([str(t) for t in TRUSTED_JOB_TASKS]),
                SystemEvent.subtype.in_([str(s) for s in JOB_END_SUBTYPES]),
            )
            .order_by(SystemEvent.timestamp.desc(), SystemEvent.id.desc())
            .limit(1)
        )
    ).first()
    return {
        "series": series,
        "workloads": {"total": workloads[0], "unanswered": workloads[1]},
        "samples": {"used": samples[0], "taken": samples[3], "ready": samples[1], "unanswered": samples[2]},
        "last_trusted_job": None
        if last is None
        else {"task": last[0], "outcome": last[1], "at": last[2].isoformat(), "description": last[3][:500]},
    }


async def crossval_view(ctx: ServiceContext) -> dict[str, Any]:
    runtime = ctx.dependency(CrossValidatorRuntime)
    async with ctx.sessions() as session:
        status = await crossval_status(session)
    status["trusted_miner_configured"] = runtime.trusted_miner_configured
    return status
