"""The batch coordinator's database side (`docs/scheduling.md §8`): shards, barrier, completion.

Every write about a batch happens in a transaction that first locks the batch's
`synthetic_job_batches` row (`lock_batch`, `SELECT ... FOR UPDATE`) and then its shards. The lock
serialises the `batch.shard.ready` and `batch.shard.completed` handlers of every scheduler replica
and the coordinator loop on one batch, so "is everyone ready?" and "is everyone done?" are asked
once, by whoever changes the last shard, and the answer is published exactly once. The release is
remembered by its own outbox row (`release_published`), the completion by `completed_at`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.bus.messages import BatchCompleted, BatchReleased
from horde_common.bus.outbox import add_to_outbox
from horde_common.db.models import BatchShard, Cycle, Neuron, OutboxMessage, SyntheticJobBatch
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.telemetry import record_event
from horde_scheduler.coordination import Candidate, ShardState

# Open batches the loop sweeps per pass: one at a time is the normal case; a backlog (a scheduler
# that was down) drains over a few passes instead of in one long transaction series.
SWEEP_LIMIT = 20


@dataclass(frozen=True, slots=True)
class LockedBatch:
    """The batch row's fields the coordinator needs, read under its row lock."""

    id: int
    block: int | None
    cycle: tuple[int, int] | None
    started_at: datetime | None
    completed_at: datetime | None


async def lock_batch(session: AsyncSession, batch_id: int) -> LockedBatch | None:
    """Lock the batch row for the rest of the transaction; None when there is no such batch."""
    row = (
        await session.execute(
            select(SyntheticJobBatch).where(SyntheticJobBatch.id == batch_id).with_for_update()
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    cycle = None
    if row.cycle_id is not None:
        found = (
            await session.execute(select(Cycle.start, Cycle.stop).where(Cycle.id == row.cycle_id))
        ).first()
        cycle = None if found is None else (int(found.start), int(found.stop))
    return LockedBatch(row.id, row.block, cycle, row.started_at, row.completed_at)


async def newest_candidates(session: AsyncSession) -> tuple[int | None, list[Candidate]]:
    """The neurons of the newest stored metagraph snapshot (docs/scheduling.md §6.2) and its block."""
    newest = (await session.execute(select(func.max(Neuron.block)))).scalar_one_or_none()
    if newest is None:
        return None, []
    rows = (await session.scalars(select(Neuron).where(Neuron.block == newest).order_by(Neuron.uid))).all()
    return int(newest), [Candidate(n.uid, n.hotkey, n.axon_ip, n.axon_port, n.is_serving) for n in rows]


async def has_shards(session: AsyncSession, batch_id: int) -> bool:
    found = await session.scalars(select(BatchShard.id).where(BatchShard.batch_id == batch_id).limit(1))
    return found.first() is not None


async def insert_shards(
    session: AsyncSession, batch_id: int, shards: list[list[Candidate]], deadline: datetime
) -> None:
    """One `requested` row per shard, and the batch's `shard_count`."""
    for index, miners in enumerate(shards):
        session.add(
            BatchShard(
                batch_id=batch_id,
                shard_index=index,
                miner_hotkeys=[m.hotkey for m in miners],
                state=ShardState.REQUESTED.value,
                deadline_at=deadline,
                error="",
                attempts=0,
            )
        )
    await session.execute(
        update(SyntheticJobBatch).where(SyntheticJobBatch.id == batch_id).values(shard_count=len(shards))
    )
    await session.flush()


async def shards_of(session: AsyncSession, batch_id: int) -> list[BatchShard]:
    """The batch's shards in index order, locked (call after `lock_batch`)."""
    stmt = (
        select(BatchShard)
        .where(BatchShard.batch_id == batch_id)
        .order_by(BatchShard.shard_index)
        .with_for_update()
    )
    return list((await session.scalars(stmt)).all())


async def release_published(session: AsyncSession, batch_id: int) -> bool:
    """Whether a `batch.released` of this batch is in the outbox (committed, or staged in this
    transaction). Outbox rows are kept a day after publishing; a batch lives minutes."""
    await session.flush()
    stmt = (
        select(OutboxMessage.id)
        .where(
            OutboxMessage.routing_key == BatchReleased.ROUTING_KEY,
            OutboxMessage.body["batch_id"].as_integer() == batch_id,
        )
        .limit(1)
    )
    return (await session.scalars(stmt)).first() is not None


async def stage_release(session: AsyncSession, batch_id: int, now: datetime) -> BatchReleased:
    """Put `batch.released` in the outbox (the loop's path; handlers return it instead)."""
    msg = BatchReleased(batch_id=batch_id, released_at=now)
    await add_to_outbox(session, msg)
    return msg


async def mark_completed(session: AsyncSession, batch: LockedBatch, now: datetime) -> BatchCompleted:
    """Set `completed_at` and build `batch.completed`; the caller stages or returns it.

    A batch without a cycle (staggering off) reports the empty range `[0, 0)`: it is never scored.
    """
    await session.execute(
        update(SyntheticJobBatch).where(SyntheticJobBatch.id == batch.id).values(completed_at=now)
    )
    start, stop = batch.cycle if batch.cycle is not None else (0, 0)
    return BatchCompleted(batch_id=batch.id, cycle_start=start, cycle_stop=stop)


async def open_batches(session: AsyncSession, limit: int = SWEEP_LIMIT) -> list[int]:
    """Started, uncompleted batches that have shards (the coordinator's), oldest first."""
    stmt = (
        select(SyntheticJobBatch.id)
        .where(
            SyntheticJobBatch.completed_at.is_(None),
            SyntheticJobBatch.started_at.is_not(None),
            select(BatchShard.id).where(BatchShard.batch_id == SyntheticJobBatch.id).exists(),
        )
        .order_by(SyntheticJobBatch.id)
        .limit(limit)
    )
    return [int(i) for i in (await session.scalars(stmt)).all()]


async def undispatched_batches(
    session: AsyncSession, before: datetime, limit: int = SWEEP_LIMIT
) -> list[int]:
    """Scheduled batches started before `before` that never got shards nor a completion: their
    dispatch was lost. Batches without a cycle are left alone (the debug command's run in-process)."""
    stmt = (
        select(SyntheticJobBatch.id)
        .where(
            SyntheticJobBatch.completed_at.is_(None),
            SyntheticJobBatch.started_at < before,
            SyntheticJobBatch.cycle_id.is_not(None),
            ~select(BatchShard.id).where(BatchShard.batch_id == SyntheticJobBatch.id).exists(),
        )
        .order_by(SyntheticJobBatch.id)
        .limit(limit)
    )
    return [int(i) for i in (await session.scalars(stmt)).all()]


async def in_flight(session: AsyncSession) -> bool:
    """Whether a coordinator batch (one with shards) is still running."""
    return bool(await open_batches(session, limit=1))


async def fail_overdue(session: AsyncSession, shard: BatchShard, now: datetime, service: str) -> None:
    """Fail a shard that never reported by its deadline, with a VALIDATOR_FAILURE naming its
    miners: the runner or the bus failed us, never the miners (docs/scheduling.md §8.4)."""
    deadline = shard.deadline_at.isoformat() if shard.deadline_at else None
    reason = f"no batch.shard.completed by its deadline {deadline}"
    shard.state = ShardState.FAILED.value
    shard.completed_at = now
    shard.error = reason
    await record_event(
        session,
        SystemEventType.VALIDATOR_FAILURE,
        SystemEventSubtype.GENERIC_ERROR,
        f"synthetic shard {shard.shard_index} of batch {shard.batch_id} failed: {reason}",
        {
            "batch_id": shard.batch_id,
            "shard_index": shard.shard_index,
            "miner_hotkeys": list(shard.miner_hotkeys),
            "deadline_at": deadline,
        },
        service=service,
    )


async def record_undispatched(session: AsyncSession, batch_id: int, service: str) -> None:
    """The VALIDATOR_FAILURE of a batch given up because its dispatch was lost (no miner blamed)."""
    await record_event(
        session,
        SystemEventType.VALIDATOR_FAILURE,
        SystemEventSubtype.GENERIC_ERROR,
        f"synthetic batch {batch_id} was started but never dispatched; given up",
        {"batch_id": batch_id},
        service=service,
    )


async def record_failed_to_wait(
    session: AsyncSession, batch_id: int, block: int, head: int, service: str
) -> None:
    """`VALIDATOR_SYNTHETIC_JOBS_FAILURE / FAILED_TO_WAIT`: the chain never reached the batch's
    block within the polls allowed (docs/scheduling.md §4); the batch stays un-started."""
    await record_event(
        session,
        SystemEventType.VALIDATOR_SYNTHETIC_JOBS_FAILURE,
        SystemEventSubtype.FAILED_TO_WAIT,
        "Failed to wait for the batch's block",
        {"batch_id": batch_id, "block": block, "current_block": head},
        service=service,
    )
