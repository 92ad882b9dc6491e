"""The planner's database side (`docs/scheduling.md §7`): validator lists, cycles, batch rows.

Every write that two scheduler replicas could both attempt runs in a transaction holding one
transaction-scoped advisory lock (`PLAN_LOCK_KEY`) and re-checks its precondition under it, so
replicas take turns and the second sees the first's rows. The lock wait is bounded by
`LOCK_TIMEOUT_MS`; a replica that cannot get it in time fails the iteration and retries later.
Starting a batch uses row locks instead (`FOR UPDATE SKIP LOCKED`), as the reference did.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.db.models import Cycle, Neuron, SyntheticJobBatch, SystemEvent, Validator
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.telemetry import record_event
from horde_scheduler.planning import DueBatch, list_snapshot_block, missed_before
from horde_scheduler.slots import (
    NeuronStake,
    RunAction,
    RunParams,
    RunPlan,
    Slot,
    SlotParams,
    plan_run,
    select_validators,
)

log = structlog.get_logger(__name__)

# Serialises planning between scheduler replicas (an arbitrary, fixed 64-bit key: "schedule").
PLAN_LOCK_KEY = 0x7363_6865_6475_6C65
# Planning transactions are a handful of small statements; 10 s of waiting for the other replica
# means it is stuck, and this iteration gives up instead of hanging the loop.
LOCK_TIMEOUT_MS = 10_000


async def take_plan_lock(session: AsyncSession) -> None:
    """Wait (at most `LOCK_TIMEOUT_MS`) for the planning lock; released when the transaction ends."""
    await session.execute(text(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"))
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PLAN_LOCK_KEY})


async def batch_in_cycle(session: AsyncSession, cycle: range) -> SyntheticJobBatch | None:
    """The latest batch whose block lies in `cycle` (`start <= block < stop`), started or not."""
    stmt = (
        select(SyntheticJobBatch)
        .where(SyntheticJobBatch.block >= cycle.start, SyntheticJobBatch.block < cycle.stop)
        .order_by(SyntheticJobBatch.block.desc())
        .limit(1)
    )
    return (await session.scalars(stmt)).first()


async def stored_list(session: AsyncSession, block: int) -> list[str] | None:
    """The hotkeys of the validator list stored for `block`, in list order (None when none is)."""
    rows = (
        await session.scalars(
            select(Validator.hotkey).where(Validator.block == block).order_by(Validator.position)
        )
    ).all()
    return list(rows) if rows else None


async def snapshot_for(session: AsyncSession, cycle_start: int) -> int | None:
    """The stored snapshot block standing for the metagraph at `cycle_start` (see
    `planning.list_snapshot_block`), or None while the sync has not reached the cycle."""
    before = (
        await session.execute(select(func.max(Neuron.block)).where(Neuron.block <= cycle_start))
    ).scalar_one_or_none()
    after = (
        await session.execute(select(func.min(Neuron.block)).where(Neuron.block > cycle_start))
    ).scalar_one_or_none()
    return list_snapshot_block(cycle_start, before, after)


async def validator_list(session: AsyncSession, cycle: range, params: SlotParams) -> list[str] | None:
    """The hotkeys of the cycle's validator list, in list order, stored in `validators` at
    `cycle.start` the first time (docs/scheduling.md §7.2); None while no snapshot covers the
    cycle start. Call under the planning lock.

    A list already stored is returned as stored, so every later plan of the cycle, on any replica,
    uses the same list even if newer snapshots arrive meanwhile.
    """
    stored = await stored_list(session, cycle.start)
    if stored is not None:
        return stored
    source = await snapshot_for(session, cycle.start)
    if source is None:
        return None
    neurons = (await session.scalars(select(Neuron).where(Neuron.block == source).order_by(Neuron.uid))).all()
    listed = select_validators((NeuronStake(n.uid, n.hotkey, n.stake) for n in neurons), params)
    if listed:
        await session.execute(
            pg_insert(Validator)
            .values(
                [
                    {"block": cycle.start, "hotkey": n.hotkey, "stake": n.stake, "position": i}
                    for i, n in enumerate(listed)
                ]
            )
            .on_conflict_do_nothing(constraint="uq_validators_block_hotkey")
        )
    if listed:
        log.info(
            "validator list stored", cycle_start=cycle.start, snapshot_block=source, validators=len(listed)
        )
    return [n.hotkey for n in listed]


async def cycle_id(session: AsyncSession, cycle: range) -> int:
    """The id of the `cycles` row of `cycle`, inserting it if missing (unique on start, stop)."""
    await session.execute(
        pg_insert(Cycle)
        .values(start=cycle.start, stop=cycle.stop)
        .on_conflict_do_nothing(constraint="uq_cycles_start_stop")
    )
    found = await session.scalars(
        select(Cycle.id).where(Cycle.start == cycle.start, Cycle.stop == cycle.stop)
    )
    return found.one()


async def insert_batch(session: AsyncSession, slot: Slot, service: str) -> int:
    """Insert the batch row of `slot` and its `VALIDATOR_SYNTHETIC_JOB_SCHEDULED` event in the
    caller's transaction (under the planning lock, after `batch_in_cycle` found nothing)."""
    cid = await cycle_id(session, slot.cycle)
    batch_id = (
        await session.execute(
            pg_insert(SyntheticJobBatch)
            .values(batch_uuid=uuid.uuid4(), cycle_id=cid, block=slot.block)
            .returning(SyntheticJobBatch.id)
        )
    ).scalar_one()
    await record_event(
        session,
        SystemEventType.VALIDATOR_SYNTHETIC_JOB_SCHEDULED,
        SystemEventSubtype.SUCCESS,
        "",
        {"seed": slot.seed, "index": slot.index, "block": slot.block},
        service=service,
    )
    return int(batch_id)


async def report_not_a_validator(
    session: AsyncSession, cycle: range, hotkey: str, count: int, service: str
) -> bool:
    """Record, once per cycle, that we are not on the cycle's list (docs/scheduling.md §7.1).

    The reference recorded `WEIGHT_SETTING_FAILURE / GENERIC_ERROR` (its generic error helper) on
    every planning attempt, once a minute; we keep the strings but record one per cycle. Returns
    whether an event was written. Call under the planning lock.
    """
    seen = await session.scalars(
        select(SystemEvent.id)
        .where(
            SystemEvent.type == SystemEventType.WEIGHT_SETTING_FAILURE,
            SystemEvent.subtype == SystemEventSubtype.GENERIC_ERROR,
            SystemEvent.data["cycle_start"].astext == str(cycle.start),
        )
        .limit(1)
    )
    if seen.first() is not None:
        return False
    await record_event(
        session,
        SystemEventType.WEIGHT_SETTING_FAILURE,
        SystemEventSubtype.GENERIC_ERROR,
        "This validator is not in a list of validators -> not scheduling synthetic jobs run",
        {"cycle_start": cycle.start, "cycle_stop": cycle.stop, "hotkey": hotkey, "validators": count},
        service=service,
    )
    return True


@dataclass(frozen=True, slots=True)
class MissedBatch:
    batch_id: int
    block: int


async def mark_missed(session: AsyncSession, head: int, run: RunParams, service: str) -> list[MissedBatch]:
    """Flag `is_missed` on un-started batches more than `run.max_oversleep` blocks in the past,
    with one `VALIDATOR_SYNTHETIC_JOBS_FAILURE / OVERSLEPT` event each (docs/scheduling.md §7.3).

    The UPDATE's row locks make a concurrent replica wait and then skip the rows already flagged,
    so each batch gets exactly one event.
    """
    now = datetime.now(UTC)
    rows = (
        await session.execute(
            update(SyntheticJobBatch)
            .where(
                SyntheticJobBatch.block < missed_before(head, run),
                SyntheticJobBatch.started_at.is_(None),
                SyntheticJobBatch.is_missed.is_(False),
            )
            .values(is_missed=True)
            .returning(SyntheticJobBatch.id, SyntheticJobBatch.block, SyntheticJobBatch.created_at)
        )
    ).all()
    missed = sorted((MissedBatch(int(r.id), int(r.block)) for r in rows), key=lambda m: m.block)
    created = {int(r.id): r.created_at for r in rows}
    for m in missed:
        await record_event(
            session,
            SystemEventType.VALIDATOR_SYNTHETIC_JOBS_FAILURE,
            SystemEventSubtype.OVERSLEPT,
            "Failed to run synthetic jobs in time",
            {
                "batch_id": m.batch_id,
                "created_at": str(created[m.batch_id]),
                "block": m.block,
                "current_block": head,
                "current_time": str(now),
            },
            service=service,
        )
    return missed


async def start_unscheduled(session: AsyncSession) -> DueBatch:
    """The stagger-off debug path: a batch with no block and no cycle, started now (never scored)."""
    row = (
        await session.execute(
            pg_insert(SyntheticJobBatch)
            .values(batch_uuid=uuid.uuid4(), started_at=func.now())
            .returning(SyntheticJobBatch.id, SyntheticJobBatch.batch_uuid)
        )
    ).one()
    return DueBatch(int(row.id), str(row.batch_uuid), None, None, RunPlan(RunAction.RUN_UNSCHEDULED))


async def take_due(session: AsyncSession, head: int, run: RunParams, service: str) -> DueBatch | None:
    """Pick the earliest un-started batch in the due window and, unless it is still ahead, mark it
    started in the caller's transaction (docs/scheduling.md §7.4).

    `FOR UPDATE SKIP LOCKED`: a concurrent caller skips the row being started, and once this
    transaction commits the row has `started_at`, so no two callers ever start the same batch.
    """
    window_rows: Sequence[SyntheticJobBatch] = (
        await session.scalars(
            select(SyntheticJobBatch)
            .where(
                SyntheticJobBatch.started_at.is_(None),
                SyntheticJobBatch.is_missed.is_(False),
                SyntheticJobBatch.block >= head - run.max_oversleep,
                SyntheticJobBatch.block <= head + run.wait_in_advance,
            )
            .order_by(SyntheticJobBatch.block)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not window_rows:
        return None
    batch = window_rows[0]
    plan = None if batch.block is None else plan_run(head, batch.block, params=run)
    if plan is None:  # not reached: the window filter excludes rows without a block
        return None
    due = DueBatch(
        batch_id=batch.id,
        batch_uuid=str(batch.batch_uuid),
        block=batch.block,
        cycle_id=batch.cycle_id,
        plan=plan,
        others_due=len(window_rows) - 1,
    )
    if plan.action is RunAction.WAIT:
        return due
    await session.execute(
        update(SyntheticJobBatch).where(SyntheticJobBatch.id == batch.id).values(started_at=func.now())
    )
    if plan.action is RunAction.RUN_OVERSLEPT:
        await record_event(
            session,
            SystemEventType.VALIDATOR_OVERSLEPT_SCHEDULED_JOB_WARNING,
            SystemEventSubtype.WARNING,
            "Overslept a batch run, but still within acceptable margin",
            {
                "batch_id": batch.id,
                "batch_created_at": str(batch.created_at),
                "should_run_at_block": batch.block,
                "current_block": head,
            },
            service=service,
        )
    return due
