"""The bus against the real RabbitMQ and Postgres: delivery, idempotency, dead-lettering.

Every wait is on an event or a queue with a timeout; `Broker.settle_listeners` tells a test when a
delivery has been acked or nacked, so nothing here sleeps to "let the broker catch up". The `sf`,
`channel` and `make_broker` fixtures are the shared ones of testing/.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.broker import Broker
from horde_common.bus.messages import (
    BatchCompleted,
    BatchReleased,
    BatchShardReady,
    ChainMetagraphSynced,
)
from horde_common.bus.router import BusRouter, HandlerContext
from horde_common.bus.topology import DEAD_LETTER_QUEUE, EXCHANGE, MAX_DELIVERIES
from horde_common.db.models.bus import ProcessedMessage
from testing.bus_checks import T, collect, next_outcome, outcomes, processed_rows, ready_count


async def test_round_trip_records_the_idempotency_row(
    channel: AbstractChannel, make_broker: Callable[..., Broker], sf: async_sessionmaker[AsyncSession]
) -> None:
    router = BusRouter()
    got: asyncio.Queue[tuple[ChainMetagraphSynced, HandlerContext]] = asyncio.Queue()

    @router.handler("weights.chain.metagraph.synced")
    async def on_synced(msg: ChainMetagraphSynced, ctx: HandlerContext) -> None:
        assert ctx.session.in_transaction()
        got.put_nowait((msg, ctx))

    consumer = make_broker("weights")
    settled = outcomes(consumer)
    await consumer.start(router)
    producer = make_broker("scheduler", db=False)
    await producer.connect()
    assert producer.is_connected and consumer.is_connected

    sent = ChainMetagraphSynced(block=5, neuron_count=10)
    await producer.publish(sent)
    received, ctx = await asyncio.wait_for(got.get(), T)
    assert received == sent
    assert (ctx.delivery_count, ctx.redelivered, ctx.message_id) == (1, False, sent.message_id)
    assert await next_outcome(settled) == "processed"
    assert await processed_rows(sf, sent.message_id) == 1


async def test_many_concurrent_publishes_all_arrive(
    channel: AbstractChannel, make_broker: Callable[..., Broker]
) -> None:
    router = BusRouter()
    seen: set[uuid.UUID] = set()
    done = asyncio.Event()
    sent = [ChainMetagraphSynced(block=i, neuron_count=1) for i in range(300)]

    @router.handler("weights.chain.metagraph.synced")
    async def on_synced(msg: ChainMetagraphSynced, ctx: HandlerContext) -> None:
        seen.add(msg.message_id)
        if len(seen) == len(sent):
            done.set()

    consumer = make_broker("weights", db=False, prefetch=100)  # a pure consumer: no DB at all
    await consumer.start(router)
    producer = make_broker("scheduler", db=False)
    await producer.connect()
    await producer.publish_many(sent)
    await asyncio.wait_for(done.wait(), T)
    assert seen == {m.message_id for m in sent}


async def test_consumer_killed_mid_message_is_redelivered_and_processed_once(
    channel: AbstractChannel, make_broker: Callable[..., Broker], sf: async_sessionmaker[AsyncSession]
) -> None:
    started, never = asyncio.Event(), asyncio.Event()
    completed: list[HandlerContext] = []
    crashing, healthy = BusRouter(), BusRouter()

    @crashing.handler("weights.batch.completed")
    async def blocked(msg: BatchCompleted, ctx: HandlerContext) -> None:
        started.set()
        await never.wait()

    @healthy.handler("weights.batch.completed")
    async def works(msg: BatchCompleted, ctx: HandlerContext) -> None:
        completed.append(ctx)

    first = make_broker("weights")
    await first.start(crashing)
    sent = BatchCompleted(batch_id=1, cycle_start=0, cycle_stop=722)
    await first.publish(sent)
    await asyncio.wait_for(started.wait(), T)
    await first.stop(grace_s=0)  # the pod dies: handler cancelled, transaction rolled back, no ack

    second = make_broker("weights")
    settled = outcomes(second)
    await second.start(healthy)
    assert await next_outcome(settled) == "processed"
    [ctx] = completed
    assert ctx.redelivered and ctx.delivery_count == 2
    assert await processed_rows(sf, sent.message_id) == 1


async def test_redelivery_after_commit_is_skipped_as_duplicate(
    channel: AbstractChannel, make_broker: Callable[..., Broker], sf: async_sessionmaker[AsyncSession]
) -> None:
    """The transaction committed but the ack never reached RabbitMQ: the redelivery is a no-op."""
    calls: list[str] = []
    router = BusRouter()

    @router.handler("weights.batch.completed")
    async def on_batch(msg: BatchCompleted, ctx: HandlerContext) -> None:
        calls.append(f"delivery {ctx.delivery_count}")

    sent = BatchCompleted(batch_id=2, cycle_start=0, cycle_stop=722)
    # The first delivery "committed": its idempotency row exists, exactly as the handler's commit left it.
    async with sf() as s, s.begin():
        s.add(ProcessedMessage(queue="weights.batch.completed", message_id=sent.message_id))

    broker = make_broker("weights")
    settled = outcomes(broker)
    await broker.start(router)
    await broker.publish(sent)
    assert await next_outcome(settled) == "duplicate"
    assert calls == []
    assert await ready_count(channel, "weights.batch.completed") == 0


async def test_connection_lost_mid_handler_then_redelivered_once(
    channel: AbstractChannel, make_broker: Callable[..., Broker], sf: async_sessionmaker[AsyncSession]
) -> None:
    """The AMQP connection drops while the handler runs: the delivery comes back and is done once."""
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[int] = []
    router = BusRouter()

    @router.handler("weights.batch.completed")
    async def on_batch(msg: BatchCompleted, ctx: HandlerContext) -> None:
        if ctx.delivery_count == 1:
            started.set()
            await release.wait()
        finished.append(ctx.delivery_count)

    first = make_broker("weights")
    first_settled = outcomes(first)
    await first.start(router)
    sent = BatchCompleted(batch_id=3, cycle_start=0, cycle_stop=722)
    await first.publish(sent)
    await asyncio.wait_for(started.wait(), T)
    assert first._connection is not None
    await first._connection.close()  # the connection dies under the running handler
    release.set()

    second = make_broker("weights")
    second_settled = outcomes(second)
    await second.start(router)
    results = {await next_outcome(second_settled)}
    # aiormq cancels a channel's consumer tasks when it closes, so the first handler normally dies
    # before its commit; if it did commit, its ack was lost and the redelivery must be skipped.
    if first_settled.empty():
        assert results == {"processed"}
        assert finished == [2]
    else:
        assert await next_outcome(first_settled) == "lost"
        assert results == {"duplicate"}
        assert finished == [1]
    assert await processed_rows(sf, sent.message_id) == 1


async def test_poison_message_is_dead_lettered_after_max_deliveries(
    channel: AbstractChannel, make_broker: Callable[..., Broker]
) -> None:
    attempts: list[int] = []
    router = BusRouter()

    @router.handler("scheduler.batch.shard.ready")
    async def always_fails(msg: BatchShardReady, ctx: HandlerContext) -> None:
        attempts.append(ctx.delivery_count)
        raise RuntimeError("poison")

    dead = await collect(channel, DEAD_LETTER_QUEUE)
    broker = make_broker("scheduler")
    await broker.start(router)
    sent = BatchShardReady(batch_id=1, shard_index=0, ready_executor_count=3)
    await broker.publish(sent)
    message = await asyncio.wait_for(dead.get(), T)
    assert message.message_id == str(sent.message_id)
    assert message.headers["x-first-death-reason"] == "delivery_limit"
    assert attempts == list(range(1, MAX_DELIVERIES + 1))
    assert await ready_count(channel, "scheduler.batch.shard.ready") == 0


async def test_unparseable_message_goes_straight_to_dead_letters(
    channel: AbstractChannel, make_broker: Callable[..., Broker]
) -> None:
    called: list[object] = []
    router = BusRouter()

    @router.handler("weights.chain.metagraph.synced")
    async def on_synced(msg: ChainMetagraphSynced, ctx: HandlerContext) -> None:
        called.append(msg)

    dead = await collect(channel, DEAD_LETTER_QUEUE)
    broker = make_broker("weights")
    settled = outcomes(broker)
    await broker.start(router)
    exchange = await channel.get_exchange(EXCHANGE)
    await exchange.publish(aio_pika.Message(b'{"block": "not a number"}'), "chain.metagraph.synced")
    assert await next_outcome(settled) == "dead-lettered"
    message = await asyncio.wait_for(dead.get(), T)
    assert message.headers["x-first-death-reason"] == "rejected"
    assert called == []


async def test_stop_lets_in_flight_handlers_finish(
    channel: AbstractChannel, make_broker: Callable[..., Broker]
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    router = BusRouter()

    @router.handler("weights.batch.completed")
    async def slow(msg: BatchCompleted, ctx: HandlerContext) -> None:
        started.set()
        await release.wait()

    broker = make_broker("weights")
    settled = outcomes(broker)
    await broker.start(router)
    await broker.publish(BatchCompleted(batch_id=4, cycle_start=0, cycle_stop=1))
    await asyncio.wait_for(started.wait(), T)
    stopping = asyncio.create_task(broker.stop(grace_s=T))
    release.set()
    await asyncio.wait_for(stopping, T)
    assert await next_outcome(settled) == "processed"
    assert not broker.is_connected
    assert await ready_count(channel, "weights.batch.completed") == 0


async def test_broadcast_reaches_every_replica(
    channel: AbstractChannel, make_broker: Callable[..., Broker]
) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()

    def replica(name: str) -> BusRouter:
        router = BusRouter()

        @router.handler("job-runner.batch.released")
        async def on_released(msg: BatchReleased, ctx: HandlerContext) -> None:
            got.put_nowait(name)

        return router

    for name in ("a", "b"):
        await make_broker("job-runner", instance_id=f"replica-{name}-{uuid.uuid4().hex[:6]}").start(
            replica(name)
        )
    producer = make_broker("scheduler", db=False)
    await producer.connect()
    await producer.publish(BatchReleased(batch_id=9, released_at=datetime.now(UTC)))
    assert {await asyncio.wait_for(got.get(), T), await asyncio.wait_for(got.get(), T)} == {"a", "b"}


async def test_unroutable_work_message_fails_but_a_broadcast_nobody_hears_does_not(
    channel: AbstractChannel, make_broker: Callable[..., Broker]
) -> None:
    producer = make_broker("scheduler", db=False)
    await producer.connect()
    with pytest.raises(aio_pika.exceptions.PublishError):
        await producer.publish_raw("no.such.key", b"{}", message_id=uuid.uuid4(), headers={})
    await producer.publish(BatchReleased(batch_id=1, released_at=datetime.now(UTC)))  # no replica up
