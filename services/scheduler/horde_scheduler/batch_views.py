"""Operator views of the synthetic batches: `/debug/cycle` and `/debug/batches/<id or uuid>`
(docs/operations.md §5.4).

Read-only. The queries (`read_*`) are bounded (LIMIT, a statement timeout and an overall deadline)
so a debug request never holds a connection for long; the formatting (`format_*`, `batch_state`) is
pure, so what an operator sees is a unit test. No chain call: the current block is the newest stored
metagraph snapshot's, which the sync loop keeps within a few blocks of the head (docs/scheduling.md §6).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.db.models import Cycle, Neuron, SyntheticJob, SyntheticJobBatch, SystemEvent
from horde_common.db.models.enums import JobStatus
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.service import ServiceContext
from horde_common.service.app import DebugKeyError
from horde_scheduler.cycles import CycleParams, cycle_containing, cycle_number

# A debug request is an operator waiting at a terminal; anything slower means a sick database, and the
# answer "timed out" is more useful than a hung request (and a held pool connection).
QUERY_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_MS = 3_000
# A batch records about ten stages per shard; 200 rows is every stage of 20 shards, far more than
# any batch has, and caps the answer if the events table holds something unexpected.
MAX_CHECKPOINT_STAGES = 200
# Job statuses are a four-value enum; the cap only bounds the grouped query.
MAX_STATUSES = 20
# Miners listed with their excused jobs: a batch tests at most a few hundred miners (256 uids); the
# cap only bounds the answer.
MAX_EXCUSED_MINERS = 1024
# CHECKPOINT events are timestamped by the job-runner's clock, the batch row by Postgres's; the batch
# row exists before any of its events, and this margin absorbs clock skew between the two machines.
CLOCK_SKEW_MARGIN = timedelta(minutes=10)
# The largest value of a BIGINT primary key: a longer number cannot name a batch.
MAX_BATCH_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class BatchRow:
    """The columns of one `synthetic_job_batches` row the views show, with its `cycles` row's range."""

    id: int
    batch_uuid: str
    block: int | None
    cycle_id: int | None
    cycle_start: int | None
    cycle_stop: int | None
    created_at: datetime | None
    started_at: datetime | None
    accepting_results_until: datetime | None
    completed_at: datetime | None
    scored_at: datetime | None
    is_missed: bool
    scored: bool
    shard_count: int


@dataclass(frozen=True, slots=True)
class JobCounts:
    """A batch's `synthetic_jobs`: how many per status, how many excluded from scoring, how many miners,
    and the excused declines per miner (docs/synthetic-batch.md §9)."""

    by_status: dict[str, int] = field(default_factory=dict)
    excluded: int = 0
    miners: int = 0
    excused_by_miner: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One stage of a batch: when its first and last shard reached it, and how many shards did."""

    stage: str
    first_at: datetime
    last_at: datetime
    shards: int


@dataclass(frozen=True, slots=True)
class Head:
    """The block the views call "now": the newest stored snapshot's, and when it was stored."""

    block: int
    synced_at: datetime | None


# --- pure ------------------------------------------------------------------------------------------


def parse_batch_key(key: str) -> int | uuid.UUID:
    """A batch's numeric id or its uuid; `DebugKeyError` (a 400) for anything else."""
    key = key.strip()
    if key.isdigit():
        value = int(key)
        if 0 < value <= MAX_BATCH_ID:
            return value
        raise DebugKeyError(f"batch id out of range: {key!r}")
    try:
        return uuid.UUID(key)
    except ValueError:
        raise DebugKeyError(f"not a batch id or uuid: {key!r}") from None


def batch_state(row: BatchRow) -> str:
    """planned / running / completed / missed: the one word an operator scans a list for."""
    if row.is_missed:
        return "missed"
    if row.completed_at is not None:
        return "completed"
    if row.started_at is not None:
        return "running"
    return "planned"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def format_batch_summary(row: BatchRow) -> dict[str, Any]:
    """The few fields that identify a batch and where it stands (the cycle view's `slot`/`next`)."""
    return {"id": row.id, "uuid": row.batch_uuid, "block": row.block, "state": batch_state(row)}


def format_batch(row: BatchRow, counts: JobCounts, checkpoints: list[Checkpoint]) -> dict[str, Any]:
    """`/debug/batches/<key>` (and `horde batches show --json`): everything about one batch."""
    cycle = (
        {"id": row.cycle_id, "start": row.cycle_start, "stop": row.cycle_stop}
        if row.cycle_id is not None
        else None
    )
    return {
        **format_batch_summary(row),
        "cycle": cycle,
        "created_at": _iso(row.created_at),
        "started_at": _iso(row.started_at),
        "accepting_results_until": _iso(row.accepting_results_until),
        "completed_at": _iso(row.completed_at),
        "scored_at": _iso(row.scored_at),
        "is_missed": row.is_missed,
        "scored": row.scored,
        "shard_count": row.shard_count,
        "jobs": {
            "total": sum(counts.by_status.values()),
            "by_status": dict(sorted(counts.by_status.items())),
            "excluded_from_scoring": counts.excluded,
            "excused": counts.by_status.get(JobStatus.EXCUSED, 0),
            "excused_by_miner": dict(sorted(counts.excused_by_miner.items())),
        },
        "miners": counts.miners,
        "checkpoints": [
            {"stage": c.stage, "first_at": _iso(c.first_at), "last_at": _iso(c.last_at), "shards": c.shards}
            for c in checkpoints
        ],
    }


def format_cycle(
    head: Head | None, params: CycleParams, slot: BatchRow | None, next_batch: BatchRow | None
) -> dict[str, Any]:
    """`/debug/cycle`: the current block and cycle, our batch in it, and the next batch to start."""
    if head is None:
        return {
            "block": None,
            "block_source": "no metagraph snapshot stored yet",
            "cycle": None,
            "slot": None,
            "next_batch": _next(None, next_batch),
        }
    cycle = cycle_containing(head.block, params)
    return {
        "block": head.block,
        "block_source": "newest metagraph snapshot",
        "snapshot_synced_at": _iso(head.synced_at),
        "cycle": {
            "number": cycle_number(head.block, params),
            "start": cycle.start,
            "stop": cycle.stop,
            "length": len(cycle),
            "blocks_in": head.block - cycle.start,
            "blocks_left": cycle.stop - head.block,
        },
        "slot": None
        if slot is None
        else {**format_batch_summary(slot), "blocks_into_cycle": (slot.block or 0) - cycle.start},
        "next_batch": _next(head.block, next_batch),
    }


def _next(block: int | None, row: BatchRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = format_batch_summary(row)
    out["blocks_away"] = None if block is None or row.block is None else row.block - block
    return out


# --- queries ---------------------------------------------------------------------------------------


def _batch_select() -> Any:
    return select(
        SyntheticJobBatch.id,
        SyntheticJobBatch.batch_uuid,
        SyntheticJobBatch.block,
        SyntheticJobBatch.cycle_id,
        Cycle.start.label("cycle_start"),
        Cycle.stop.label("cycle_stop"),
        SyntheticJobBatch.created_at,
        SyntheticJobBatch.started_at,
        SyntheticJobBatch.accepting_results_until,
        SyntheticJobBatch.completed_at,
        SyntheticJobBatch.scored_at,
        SyntheticJobBatch.is_missed,
        SyntheticJobBatch.scored,
        SyntheticJobBatch.shard_count,
    ).outerjoin(Cycle, Cycle.id == SyntheticJobBatch.cycle_id)


def _batch_row(r: Any) -> BatchRow:
    return BatchRow(
        id=int(r.id),
        batch_uuid=str(r.batch_uuid),
        block=r.block,
        cycle_id=r.cycle_id,
        cycle_start=r.cycle_start,
        cycle_stop=r.cycle_stop,
        created_at=r.created_at,
        started_at=r.started_at,
        accepting_results_until=r.accepting_results_until,
        completed_at=r.completed_at,
        scored_at=r.scored_at,
        is_missed=bool(r.is_missed),
        scored=bool(r.scored),
        shard_count=int(r.shard_count if r.shard_count is not None else 1),
    )


async def bound_statements(session: AsyncSession) -> None:
    """Cap every statement of this (read-only) transaction at `STATEMENT_TIMEOUT_MS`."""
    await session.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))


async def read_batch(session: AsyncSession, key: int | uuid.UUID) -> BatchRow | None:
    """The batch with this id (an int) or uuid, or None."""
    column = SyntheticJobBatch.id if isinstance(key, int) else SyntheticJobBatch.batch_uuid
    r = (await session.execute(_batch_select().where(column == key).limit(1))).first()
    return None if r is None else _batch_row(r)


async def read_job_counts(session: AsyncSession, batch_id: int) -> JobCounts:
    """The batch's jobs per status, the excluded ones, the distinct miners they tested, and the
    excused declines of each miner that has any."""
    jobs = SyntheticJob.__table__
    rows = (
        await session.execute(
            select(
                jobs.c.status,
                func.count(),
                func.count().filter(jobs.c.excluded_from_scoring),
            )
            .where(jobs.c.batch_id == batch_id)
            .group_by(jobs.c.status)
            .limit(MAX_STATUSES)
        )
    ).all()
    miners = (
        await session.execute(
            select(func.count(func.distinct(jobs.c.miner_hotkey))).where(jobs.c.batch_id == batch_id)
        )
    ).scalar_one()
    excused = (
        await session.execute(
            select(jobs.c.miner_hotkey, func.count())
            .where(jobs.c.batch_id == batch_id, jobs.c.status == str(JobStatus.EXCUSED))
            .group_by(jobs.c.miner_hotkey)
            .order_by(jobs.c.miner_hotkey)
            .limit(MAX_EXCUSED_MINERS)
        )
    ).all()
    return JobCounts(
        by_status={str(r[0]): int(r[1]) for r in rows},
        excluded=sum(int(r[2]) for r in rows),
        miners=int(miners),
        excused_by_miner={str(r[0]): int(r[1]) for r in excused},
    )


async def read_checkpoints(session: AsyncSession, row: BatchRow) -> list[Checkpoint]:
    """The batch's CHECKPOINT events (the job-runner tags each with `batch_uuid`), one per stage in
    the order the stages began (docs/synthetic-batch.md §1)."""
    stage = func.coalesce(SystemEvent.data["stage"].astext, SystemEvent.long_description).label("stage")
    conditions = [
        SystemEvent.type == SystemEventType.VALIDATOR_TELEMETRY,
        SystemEvent.subtype == SystemEventSubtype.CHECKPOINT,
        SystemEvent.data["batch_uuid"].astext == row.batch_uuid,
    ]
    if row.created_at is not None:
        conditions.append(SystemEvent.timestamp >= row.created_at - CLOCK_SKEW_MARGIN)
    first = func.min(SystemEvent.timestamp)
    rows = (
        await session.execute(
            select(stage, first, func.max(SystemEvent.timestamp), func.count())
            .where(and_(*conditions))
            .group_by(literal_column("stage"))
            .order_by(first, literal_column("stage"))
            .limit(MAX_CHECKPOINT_STAGES)
        )
    ).all()
    return [Checkpoint(str(r[0]), r[1], r[2], int(r[3])) for r in rows]


async def read_head(session: AsyncSession) -> Head | None:
    """The newest stored metagraph snapshot's block and sync time (None before the first sync)."""
    block = (await session.execute(select(func.max(Neuron.block)))).scalar_one_or_none()
    if block is None:
        return None
    synced = (
        await session.execute(select(func.max(Neuron.synced_at)).where(Neuron.block == block))
    ).scalar_one_or_none()
    return Head(int(block), synced)


async def read_batch_in_cycle(session: AsyncSession, cycle: range) -> BatchRow | None:
    """Our batch whose block lies in `cycle` (`start <= block < stop`); the newest if several."""
    stmt = (
        _batch_select()
        .where(SyntheticJobBatch.block >= cycle.start, SyntheticJobBatch.block < cycle.stop)
        .order_by(SyntheticJobBatch.block.desc())
        .limit(1)
    )
    r = (await session.execute(stmt)).first()
    return None if r is None else _batch_row(r)


async def read_next_batch(session: AsyncSession) -> BatchRow | None:
    """The next batch to start: the earliest scheduled one not started and not given up as missed."""
    stmt = (
        _batch_select()
        .where(
            SyntheticJobBatch.started_at.is_(None),
            SyntheticJobBatch.is_missed.is_(False),
            SyntheticJobBatch.block.is_not(None),
        )
        .order_by(SyntheticJobBatch.block)
        .limit(1)
    )
    r = (await session.execute(stmt)).first()
    return None if r is None else _batch_row(r)


# --- reports and views -----------------------------------------------------------------------------


async def batch_report(session: AsyncSession, key: int | uuid.UUID) -> dict[str, Any] | None:
    """One batch, formatted; None when there is no such batch."""
    await bound_statements(session)
    row = await read_batch(session, key)
    if row is None:
        return None
    return format_batch(row, await read_job_counts(session, row.id), await read_checkpoints(session, row))


async def cycle_report(session: AsyncSession, params: CycleParams) -> dict[str, Any]:
    """The current cycle, formatted."""
    await bound_statements(session)
    head = await read_head(session)
    slot = None
    if head is not None:
        slot = await read_batch_in_cycle(session, cycle_containing(head.block, params))
    return format_cycle(head, params, slot, await read_next_batch(session))


def cycle_params_of(ctx: ServiceContext) -> CycleParams:
    """The cycle grid the planner uses: production's tempo on the configured subnet."""
    return CycleParams(netuid=ctx.settings.BITTENSOR_NETUID)


async def batch_view(ctx: ServiceContext, key: str) -> dict[str, Any] | None:
    """`/debug/batches/<id or uuid>`: one batch (None: a 404; a malformed key: a 400)."""
    parsed = parse_batch_key(key)
    async with asyncio.timeout(QUERY_TIMEOUT_S), ctx.sessions() as session:
        return await batch_report(session, parsed)


async def cycle_view(ctx: ServiceContext) -> dict[str, Any]:
    """`/debug/cycle`: the current block and cycle, this validator's slot in it, the next batch."""
    async with asyncio.timeout(QUERY_TIMEOUT_S), ctx.sessions() as session:
        return await cycle_report(session, cycle_params_of(ctx))
