"""Helpers of the job-runner's shard-lease tests (services/job-runner/tests/test_shard_lease_*.py):
shard rows read and forced into a state, a recorder standing in for `run_shard`, deliveries as the
consumer makes them, and the job-runner's broker with its own router (docs/synthetic-batch.md, the
shard lease)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus import Dependencies, HandlerContext
from horde_common.bus.broker import Broker, Outcome
from horde_common.bus.messages import BatchShardCompleted, BatchShardRequested, MinerEndpoint, ShardDeadlines
from horde_common.config import load_settings
from horde_common.db.models import SystemEvent
from horde_common.db.models.shards import BatchShard
from horde_job_runner.app import router as job_runner_router
from horde_job_runner.synthetic.generation import InlineJobFactory
from horde_job_runner.synthetic.handler import JobRunnerRuntime, handle_batch_shard_requested
from horde_job_runner.synthetic.model import BatchDeps, ShardRequest, ShardResult
from horde_job_runner.synthetic.shard_lease import (
    claim_shard,
)
from horde_localnet import keys

WAIT_S = 15.0  # every wait: milliseconds when it works
SHARD_QUEUE = "job-runner.batch.shard.requested"


async def shard_row(
    sessions: async_sessionmaker[AsyncSession], batch_id: int, shard_index: int = 0
) -> BatchShard:
    async with sessions() as session:
        row = await session.scalar(
            select(BatchShard).where(BatchShard.batch_id == batch_id, BatchShard.shard_index == shard_index)
        )
    assert row is not None
    return row


async def db_now(sessions: async_sessionmaker[AsyncSession]) -> datetime:
    async with sessions() as session:
        now = await session.scalar(select(func.now()))
    assert now is not None
    return now


async def claim_for(
    sessions: async_sessionmaker[AsyncSession], batch_id: int, owner: str, **kwargs: Any
) -> Any:
    return await claim_shard(
        sessions,
        batch_id=batch_id,
        shard_index=0,
        shard_message_id=uuid.uuid4(),
        miner_hotkeys=["5Fminer"],
        owner=owner,
        late=kwargs.pop("late", False),
        **kwargs,
    )


async def lapse_lease(sessions: async_sessionmaker[AsyncSession], batch_id: int) -> None:
    """The owner died: its lease lapsed (moved into the past rather than waited for)."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(BatchShard)
            .where(BatchShard.batch_id == batch_id)
            .values(lease_expires_at=func.now() - timedelta(seconds=1))
        )


class RecordedShards:
    """Stands in for `run_shard`: records each run; `gate` (if set) holds it until the test opens it."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.runs: list[ShardRequest] = []
        self.entered = asyncio.Event()
        self.gate = gate

    async def run_shard(self, request: ShardRequest, deps: BatchDeps) -> ShardResult:
        self.runs.append(request)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return ShardResult(batch_id=request.batch_id, shard_index=request.shard_index, persisted=True)


def make_runtime(
    sessions: async_sessionmaker[AsyncSession], publish: Any = None, lease_ttl_s: float = 30.0
) -> JobRunnerRuntime:
    return JobRunnerRuntime(
        sessions=sessions,
        keypair=keys.validator_keypair(0),
        settings=load_settings(SYNTHETIC_HASHCAT_DIFFICULTY="localnet"),
        publish=publish,
        job_factory=InlineJobFactory(),
        lease_ttl_s=lease_ttl_s,
    )


def shard_request(batch_id: int) -> BatchShardRequested:
    now = datetime.now(UTC)
    return BatchShardRequested(
        batch_id=batch_id,
        shard_index=0,
        shard_count=1,
        cycle_start=0,
        cycle_stop=722,
        miners=[MinerEndpoint(hotkey="5Fminer", uid=1, address="127.0.0.1", port=1)],
        deadlines=ShardDeadlines(
            accept_deadline=now + timedelta(seconds=60), release_deadline=now + timedelta(seconds=90)
        ),
        weights_version=4,
    )


async def deliver_shard(
    runtime: JobRunnerRuntime, msg: BatchShardRequested, delivery_count: int
) -> list[BatchShardCompleted]:
    """As the consumer delivers a long-running handler: no session, then the final transaction."""
    ctx = HandlerContext(
        queue=SHARD_QUEUE,
        message_id=msg.message_id,
        redelivered=delivery_count > 1,
        delivery_count=delivery_count,
        sessions=runtime.sessions,
        dependencies=Dependencies(runtime),
    )
    out = await handle_batch_shard_requested(msg, ctx)
    async with runtime.sessions() as session, session.begin():
        await ctx.run_deferred_writes(session)
    return out


async def failure_events(sessions: async_sessionmaker[AsyncSession], batch_id: int) -> list[SystemEvent]:
    async with sessions() as session:
        return list(
            (
                await session.scalars(
                    select(SystemEvent).where(
                        SystemEvent.subtype == "GENERIC_ERROR",
                        SystemEvent.data["batch_id"].as_integer() == batch_id,
                    )
                )
            ).all()
        )


async def dead_runner_left(
    sessions: async_sessionmaker[AsyncSession], batch_id: int, *, initial_sent: bool
) -> None:
    async with sessions() as session, session.begin():
        session.add(
            BatchShard(
                batch_id=batch_id,
                shard_index=0,
                miner_hotkeys=["5Fminer"],
                lease_owner="dead-runner",
                lease_expires_at=datetime.now(UTC) - timedelta(seconds=1),
                initial_sent_at=datetime.now(UTC) - timedelta(seconds=5) if initial_sent else None,
                attempts=1,
            )
        )


class Runner:
    """The job-runner's broker with its own router, bound to a runtime; its settled shard deliveries."""

    def __init__(
        self, amqp_url: str, sessions: async_sessionmaker[AsyncSession], lease_ttl_s: float = 30.0
    ) -> None:
        self.broker = Broker(amqp_url, service="job-runner", session_factory=sessions)
        self.runtime = make_runtime(sessions, publish=self.broker.publish, lease_ttl_s=lease_ttl_s)
        self.settled: asyncio.Queue[Outcome] = asyncio.Queue()
        self.broker.settle_listeners.append(
            lambda queue, _id, outcome: self.settled.put_nowait(outcome) if queue == SHARD_QUEUE else None
        )
        self.router = job_runner_router.bind(Dependencies(self.runtime))

    async def next_settled(self) -> Outcome:
        return await asyncio.wait_for(self.settled.get(), WAIT_S)


async def count_rows(sessions: async_sessionmaker[AsyncSession], model: Any, message_id: uuid.UUID) -> int:
    async with sessions() as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(model).where(model.message_id == message_id)
            )
            or 0
        )


async def killed_runner_left(
    sessions: async_sessionmaker[AsyncSession], batch_id: int, *, live_for_s: float, initial_sent: bool
) -> None:
    """A runner SIGKILLed a moment ago: its lease still live for `live_for_s`, never renewed again."""
    async with sessions() as session, session.begin():
        session.add(
            BatchShard(
                batch_id=batch_id,
                shard_index=0,
                miner_hotkeys=["5Fminer"],
                lease_owner="killed-runner",
                lease_expires_at=func.now() + timedelta(seconds=live_for_s),
                initial_sent_at=func.now() if initial_sent else None,
                attempts=1,
            )
        )
