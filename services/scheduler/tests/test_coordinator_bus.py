"""The batch coordinator over the real RabbitMQ and Postgres: its handlers and what it publishes.

The bus tests wait on the broker's settle notifications and on queues, never on sleeps; `channel`
(every queue purged) is the shared fixture of testing/.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from horde_common.bus.broker import Broker, Outcome
from horde_common.bus.messages import (
    BatchCompleted,
    BatchReleased,
    BatchShardCompleted,
    BatchShardReady,
    BatchShardRequested,
)
from horde_common.bus.topology import EXCHANGE
from horde_common.db.models import SyntheticJobBatch
from horde_scheduler.app import router
from horde_scheduler.coordinator import sweep
from testing.coordinator_rows import (
    CYCLE,
    OWN,
    PARAMS,
    PLANNER,
    RELEASE,
    SHARD_DEADLINE,
    T0,
    TABLES,
    WAIT_S,
    Sessions,
    batch_row,
    dispatched_batch,
    outbox,
    shards,
    store_neurons,
)
from testing.fixtures_db import truncate


@pytest.fixture()
async def sessions(sessions: Sessions) -> AsyncIterator[Sessions]:
    """The module's database (`db_url`, testing/fixtures_db.py), emptied before each test."""
    await truncate(sessions, TABLES)
    yield sessions


@pytest.fixture()
async def scheduler(
    amqp_url: str, sessions: Sessions
) -> AsyncIterator[tuple[Broker, asyncio.Queue[Outcome]]]:
    """The scheduler's router on a real broker; the queue yields each delivery's outcome."""
    broker = Broker(amqp_url, service="scheduler", session_factory=sessions, retry_delay_s=0.005)
    settled: asyncio.Queue[Outcome] = asyncio.Queue()
    broker.settle_listeners.append(lambda _q, _id, outcome: settled.put_nowait(outcome))
    await broker.start(router)
    try:
        yield broker, settled
    finally:
        await broker.stop(grace_s=0)


async def listen(channel: AbstractChannel, routing_key: str) -> asyncio.Queue[AbstractIncomingMessage]:
    """Every message published with `routing_key` from now on (a private queue bound to it)."""
    got: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(EXCHANGE, routing_key)

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        got.put_nowait(message)

    await queue.consume(on_message)
    return got


async def deliver(broker: Broker, settled: asyncio.Queue[Outcome], msg: Any) -> Outcome:
    await broker.publish(msg)
    return await asyncio.wait_for(settled.get(), WAIT_S)


async def test_release_once_every_shard_is_ready_even_when_ready_comes_twice(
    sessions: Sessions, channel: AbstractChannel, scheduler: tuple[Broker, asyncio.Queue[Outcome]]
) -> None:
    broker, settled = scheduler
    batch_id = await dispatched_batch(sessions, shard_size=3)  # shards of 3 and 2 miners
    released = await listen(channel, "batch.released")

    first = BatchShardReady(batch_id=batch_id, shard_index=0, ready_executor_count=4)
    assert await deliver(broker, settled, first) == "processed"
    assert await deliver(broker, settled, first) == "duplicate"  # the same message again
    again = BatchShardReady(batch_id=batch_id, shard_index=0, ready_executor_count=4)  # re-sent
    assert await deliver(broker, settled, again) == "processed"
    assert await outbox(sessions, "batch.released") == []

    last = BatchShardReady(batch_id=batch_id, shard_index=1, ready_executor_count=2)
    assert await deliver(broker, settled, last) == "staged"
    message = await asyncio.wait_for(released.get(), WAIT_S)
    assert BatchReleased.model_validate_json(message.body).batch_id == batch_id
    assert [(s.state, s.ready_executor_count) for s in await shards(sessions, batch_id)] == [
        ("ready", 4),
        ("ready", 2),
    ]

    late = BatchShardReady(batch_id=batch_id, shard_index=1, ready_executor_count=2)
    assert await deliver(broker, settled, late) == "processed"
    await sweep(sessions, now=RELEASE + timedelta(seconds=1), params=PARAMS)  # the deadline passes too
    assert len(await outbox(sessions, "batch.released")) == 1
    assert released.empty()


async def test_completion_publishes_batch_completed_once(
    sessions: Sessions, channel: AbstractChannel, scheduler: tuple[Broker, asyncio.Queue[Outcome]]
) -> None:
    broker, settled = scheduler
    batch_id = await dispatched_batch(sessions, shard_size=3)
    completed = await listen(channel, "batch.completed")
    for index in (0, 1):
        ready = BatchShardReady(batch_id=batch_id, shard_index=index, ready_executor_count=1)
        await deliver(broker, settled, ready)

    ok = BatchShardCompleted(batch_id=batch_id, shard_index=0, job_count=3, ok=True)
    assert await deliver(broker, settled, ok) == "processed"
    assert (await batch_row(sessions, batch_id)).completed_at is None
    failed = BatchShardCompleted(batch_id=batch_id, shard_index=1, job_count=0, ok=False, error="boom")
    assert await deliver(broker, settled, failed) == "staged"
    message = await asyncio.wait_for(completed.get(), WAIT_S)
    done = BatchCompleted.model_validate_json(message.body)
    assert (done.batch_id, done.cycle_start, done.cycle_stop) == (batch_id, CYCLE.start, CYCLE.stop)
    assert [(s.state, s.error) for s in await shards(sessions, batch_id)] == [
        ("completed", ""),
        ("failed", "boom"),
    ]
    assert (await batch_row(sessions, batch_id)).completed_at is not None

    resent = BatchShardCompleted(batch_id=batch_id, shard_index=1, job_count=0, ok=False, error="boom")
    assert await deliver(broker, settled, resent) == "processed"
    await sweep(sessions, now=SHARD_DEADLINE + timedelta(hours=1), params=PARAMS)
    assert len(await outbox(sessions, "batch.completed")) == 1
    assert completed.empty()


async def test_a_shard_that_fails_before_ready_passes_the_barrier(
    sessions: Sessions, scheduler: tuple[Broker, asyncio.Queue[Outcome]]
) -> None:
    broker, settled = scheduler
    batch_id = await dispatched_batch(sessions, shard_size=3)
    await deliver(broker, settled, BatchShardReady(batch_id=batch_id, shard_index=0, ready_executor_count=2))
    gone = BatchShardCompleted(batch_id=batch_id, shard_index=1, job_count=0, ok=False, error="crashed")
    assert await deliver(broker, settled, gone) == "staged"
    assert [b["batch_id"] for b in await outbox(sessions, "batch.released")] == [batch_id]
    assert await outbox(sessions, "batch.completed") == []


async def test_reports_for_unknown_shards_are_ignored(
    sessions: Sessions, scheduler: tuple[Broker, asyncio.Queue[Outcome]]
) -> None:
    broker, settled = scheduler
    assert await deliver(
        broker, settled, BatchShardReady(batch_id=999, shard_index=0, ready_executor_count=1)
    ) == ("processed")
    done = BatchShardCompleted(batch_id=999, shard_index=0, job_count=0, ok=True)
    assert await deliver(broker, settled, done) == "processed"


async def test_concurrent_last_readies_release_once(sessions: Sessions) -> None:
    """Two replicas handle the last two readies at the same moment: the batch row lock serialises
    them, so exactly one sees the barrier pass (and the other sees its release in the outbox)."""
    from horde_common.bus.outbox import add_to_outbox
    from horde_scheduler.batch_barrier import shard_ready

    batch_id = await dispatched_batch(sessions, shard_size=3)

    async def handle(index: int) -> int:
        async with sessions.begin() as s:
            msg = BatchShardReady(batch_id=batch_id, shard_index=index, ready_executor_count=1)
            out = await shard_ready(s, msg, now=T0 + timedelta(seconds=300))
            for released in out:  # what the bus does with a handler's return, in its transaction
                await add_to_outbox(s, released)
            return len(out)

    assert sorted(await asyncio.gather(handle(0), handle(1), handle(0), handle(1))) == [0, 0, 0, 1]
    assert len(await outbox(sessions, "batch.released")) == 1


async def test_the_loop_dispatches_the_batch_due_at_the_head(sessions: Sessions) -> None:
    """`run_coordinator_loop` against the localnet chain simulator, frozen at block 3000."""
    import time

    from horde_common.config import load_settings
    from horde_common.service import ServiceContext, ServiceSpec
    from horde_localnet.chain import running_chain
    from horde_localnet.chain_spec import load_spec
    from horde_localnet.config import DEFAULT_METAGRAPH_PATH
    from horde_scheduler.coordinator import run_coordinator_loop

    head = 3000
    base = load_spec(DEFAULT_METAGRAPH_PATH)
    spec = base.model_copy(update={"chain": base.chain.model_copy(update={"start_block": head})})
    await store_neurons(sessions, head)
    async with sessions.begin() as s:
        s.add(SyntheticJobBatch(block=head))
    fast = dataclasses.replace(PLANNER, call_timeout_s=2.0, retry_delays_s=(0.0,))
    async with running_chain(spec, block_interval=3600.0) as rc:
        ctx = ServiceContext(
            spec=ServiceSpec(name="scheduler", port=0),
            settings=load_settings(LOCALNET_CHAIN_URL=rc.url, BITTENSOR_NETUID=12),
        )
        ctx.session_factory = sessions
        task = asyncio.create_task(run_coordinator_loop(ctx, fast, PARAMS, own_hotkey=OWN))
        deadline = time.monotonic() + WAIT_S
        while not await outbox(sessions, "batch.shard.requested"):
            assert time.monotonic() < deadline and not task.done(), "the loop dispatched nothing"
            await asyncio.sleep(0.02)
        ctx.request_stop()
        await asyncio.wait_for(task, WAIT_S)
    [request] = [
        BatchShardRequested.model_validate(b) for b in await outbox(sessions, "batch.shard.requested")
    ]
    assert [m.hotkey for m in request.miners] == ["m0", "m1", "m4", "m5", "m6"]
