"""The shard lease through the real `Broker` (RabbitMQ + Postgres) with the job-runner's own router,
as the service runs it; `run_shard` is replaced by a recorder. Every wait is on an event or a queue
with a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.topology import declare_topology
from horde_common.db import create_engine, session_factory
from horde_common.db.models.bus import OutboxMessage, ProcessedMessage
from horde_job_runner.synthetic import handler
from horde_job_runner.synthetic.batch import completed_message_id
from horde_job_runner.synthetic.model import BatchDeps, ShardRequest, ShardResult
from horde_job_runner.synthetic.persistence import BatchStore
from testing.checkouts import Checkouts
from testing.shard_lease import (
    WAIT_S,
    RecordedShards,
    Runner,
    claim_for,
    count_rows,
    db_now,
    failure_events,
    shard_request,
    shard_row,
)

pytestmark = pytest.mark.timeout(60)

# --- through the real broker ----------------------------------------------------------------------


@pytest.fixture
async def purged(amqp_url: str) -> AsyncIterator[None]:
    conn = await aio_pika.connect(amqp_url)
    for queue in (await declare_topology(await conn.channel())).values():
        await queue.purge()
    yield
    await conn.close()


async def test_a_live_lease_elsewhere_runs_nothing_and_publishes_nothing(
    sessions: async_sessionmaker[AsyncSession], amqp_url: str, purged: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    batch_id, _ = await BatchStore(sessions).create_batch()
    other = await claim_for(sessions, batch_id, "other-runner", ttl_s=0.6)  # alive: its heartbeat renews
    assert other.lease is not None
    runner = Runner(amqp_url, sessions, lease_ttl_s=0.6)
    msg = shard_request(batch_id)
    try:
        async with other.lease.held():
            await runner.broker.start(runner.router)
            await runner.broker.publish(msg)
            assert await runner.next_settled() == "processed"  # acked once renewed, nothing staged
    finally:
        await runner.broker.stop(grace_s=0)
    assert shards.runs == []
    assert await count_rows(sessions, ProcessedMessage, msg.message_id) == 1
    assert await count_rows(sessions, OutboxMessage, completed_message_id(msg.message_id, batch_id, 0)) == 0
    assert await failure_events(sessions, batch_id) == []
    row = await shard_row(sessions, batch_id)
    assert (row.lease_owner, row.attempts) == ("other-runner", 1)


async def test_a_running_shard_holds_a_lease_and_no_connection(
    db_url: str, amqp_url: str, purged: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the shard runs (inside the delivery's task) the lease is ours and no connection is held."""
    engine = create_engine(db_url)
    sessions = session_factory(engine)
    checkouts = Checkouts(engine)
    gate = asyncio.Event()
    shards = RecordedShards(gate)
    held: list[int] = []

    async def run_shard(request: ShardRequest, deps: BatchDeps) -> ShardResult:
        held.append(checkouts.held_by_current_task())  # the delivery's task, as run_shard sees it
        return await shards.run_shard(request, deps)

    monkeypatch.setattr(handler, "run_shard", run_shard)
    runner = Runner(amqp_url, sessions)
    try:
        batch_id, _ = await BatchStore(sessions).create_batch()
        msg = shard_request(batch_id)
        await runner.broker.start(runner.router)
        await runner.broker.publish(msg)
        await asyncio.wait_for(shards.entered.wait(), WAIT_S)
        assert held == [0]
        row = await shard_row(sessions, batch_id)
        assert row.lease_owner == runner.runtime.lease_owner
        assert row.lease_expires_at is not None and row.lease_expires_at > await db_now(sessions)
        assert await count_rows(sessions, ProcessedMessage, msg.message_id) == 0  # recorded at the end
        gate.set()
        assert await runner.next_settled() == "staged"
        assert await count_rows(sessions, ProcessedMessage, msg.message_id) == 1
        assert (
            await count_rows(sessions, OutboxMessage, completed_message_id(msg.message_id, batch_id, 0)) == 1
        )
        row = await shard_row(sessions, batch_id)
        assert row.lease_expires_at is not None and row.lease_expires_at <= await db_now(sessions)
    finally:
        gate.set()
        await runner.broker.stop(grace_s=0)
        await engine.dispose()
