"""Rows the batch coordinator's tests set up and read back (services/scheduler/tests/test_coordinator_*.py):
neurons at a block, batches, one coordinator pass driven with explicit head blocks and times."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db.models import BatchShard, Cycle, Neuron, OutboxMessage, SyntheticJobBatch
from horde_scheduler.coordination import CoordinatorParams
from horde_scheduler.coordinator import CoordinatorState, coordinate_once
from horde_scheduler.planning import planner_params_from

Sessions = async_sessionmaker[AsyncSession]
OWN = "own-hotkey"
CYCLE = range(1430, 2152)
BLOCK = 1500
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PLANNER = planner_params_from(netuid=12)
PARAMS = CoordinatorParams()
# Production deadlines: accept after 60 s + 240 s, release 30 s later, shard 410 s after that.
ACCEPT = T0 + timedelta(seconds=300)
RELEASE = T0 + timedelta(seconds=330)
SHARD_DEADLINE = T0 + timedelta(seconds=740)
WAIT_S = 15.0  # bound of every wait on the broker; normally milliseconds

# uid, hotkey, ip, port, serving: five serving miners, one not serving, and this validator (serving).
NEURONS = [
    (0, "m0", "10.0.0.1", 8000, True),
    (1, "m1", "10.0.0.2", 8001, True),
    (2, OWN, "10.0.0.3", 8002, True),
    (3, "idle", "0.0.0.0", 0, False),
    (4, "m4", "10.0.0.5", 8004, True),
    (5, "m5", "10.0.0.6", 8005, True),
    (6, "m6", "10.0.0.7", 8006, True),
]

# What each test empties first: the coordinator's tables, the outbox and the consumer's dedupe rows.
TABLES = (
    "neurons, cycles, synthetic_job_batches, batch_shards, system_events, outbox, processed_messages CASCADE"
)


async def store_neurons(sessions: Sessions, block: int, neurons: Sequence[tuple[Any, ...]] = NEURONS) -> None:
    async with sessions.begin() as s:
        await s.execute(
            pg_insert(Neuron).values(
                [
                    {"block": block, "uid": u, "hotkey": h, "axon_ip": ip, "axon_port": p, "is_serving": srv}
                    for u, h, ip, p, srv in neurons
                ]
            )
        )


async def add_batch(sessions: Sessions, block: int = BLOCK) -> int:
    async with sessions.begin() as s:
        cycle = Cycle(start=CYCLE.start, stop=CYCLE.stop)
        s.add(cycle)
        await s.flush()
        batch = SyntheticJobBatch(block=block, cycle_id=cycle.id)
        s.add(batch)
        await s.flush()
        return int(batch.id)


async def run_pass(
    sessions: Sessions,
    *,
    head: int | None = BLOCK,
    now: datetime = T0,
    params: CoordinatorParams = PARAMS,
    state: CoordinatorState | None = None,
    **kwargs: Any,
) -> Any:
    return await coordinate_once(
        sessions,
        head=head,
        now=now,
        own_hotkey=OWN,
        planner=kwargs.pop("planner", PLANNER),
        params=params,
        state=state or CoordinatorState(),
        **kwargs,
    )


async def all_rows(sessions: Sessions, model: Any, *where: Any) -> list[Any]:
    async with sessions() as s:
        return list((await s.scalars(select(model).where(*where).order_by(model.id))).all())


async def outbox(sessions: Sessions, routing_key: str) -> list[dict[str, Any]]:
    found = await all_rows(sessions, OutboxMessage, OutboxMessage.routing_key == routing_key)
    return [r.body for r in found]


async def shards(sessions: Sessions, batch_id: int) -> list[BatchShard]:
    async with sessions() as s:
        stmt = select(BatchShard).where(BatchShard.batch_id == batch_id).order_by(BatchShard.shard_index)
        return list((await s.scalars(stmt)).all())


async def batch_row(sessions: Sessions, batch_id: int) -> SyntheticJobBatch:
    [row] = await all_rows(sessions, SyntheticJobBatch, SyntheticJobBatch.id == batch_id)
    return row


async def dispatched_batch(sessions: Sessions, shard_size: int | None = 2) -> int:
    """A batch at its block, dispatched at T0 into shards of `shard_size` miners."""
    await store_neurons(sessions, BLOCK - 2)
    batch_id = await add_batch(sessions)
    outcome = await run_pass(sessions, params=CoordinatorParams(shard_size=shard_size))
    assert outcome.dispatched is not None and outcome.dispatched.batch_id == batch_id
    return batch_id
