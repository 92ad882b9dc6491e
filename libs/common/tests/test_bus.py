"""The bus against the real RabbitMQ and Postgres: delivery, idempotency, dead-lettering, outbox, tracing.

Every wait is on an event or a queue with a timeout; `Broker.settle_listeners` tells a test when a
delivery has been acked or nacked, so nothing here sleeps to "let the broker catch up".
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.broker import Broker, Outcome
from horde_common.bus.messages import (
    BatchCompleted,
    BatchReleased,
    BatchShardCompleted,
    BatchShardReady,
    ChainMetagraphSynced,
)
from horde_common.bus.outbox import OutboxRelay, add_to_outbox
from horde_common.bus.router import BusRouter, HandlerContext
from horde_common.bus.topology import DEAD_LETTER_QUEUE, EXCHANGE, MAX_DELIVERIES, declare_topology
from horde_common.db import create_engine, session_factory
from horde_common.db.models.bus import OutboxMessage, ProcessedMessage

T = 15.0  # generous timeout of every wait; tests normally finish in milliseconds


@pytest.fixture
async def sf(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    """A plain channel for inspecting queues; every queue (and the dead letters) starts empty."""
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    queues = await declare_topology(ch)
    for q in queues.values():
        await q.purge()
    await (await ch.get_queue(DEAD_LETTER_QUEUE)).purge()
    yield ch
    await conn.close()


@pytest.fixture
async def make_broker(
    amqp_url: str, sf: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Callable[..., Broker]]:
    made: list[Broker] = []

    def make(service: str = "test", *, db: bool = True, **kwargs: Any) -> Broker:
        kwargs.setdefault("retry_delay_s", 0.005)
        broker = Broker(amqp_url, service=service, session_factory=sf if db else None, **kwargs)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.stop(grace_s=0)


def outcomes(broker: Broker) -> asyncio.Queue[tuple[str, str | None, Outcome]]:
    q: asyncio.Queue[tuple[str, str | None, Outcome]] = asyncio.Queue()
    broker.settle_listeners.append(lambda *a: q.put_nowait(a))
    return q


async def next_outcome(q: asyncio.Queue[tuple[str, str | None, Outcome]]) -> Outcome:
    return (await asyncio.wait_for(q.get(), T))[2]


async def collect(channel: AbstractChannel, queue: str) -> asyncio.Queue[AbstractIncomingMessage]:
    got: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        got.put_nowait(message)

    await (await channel.get_queue(queue)).consume(on_message)
    return got


async def ready_count(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count or 0


async def processed_rows(sf: async_sessionmaker[AsyncSession], message_id: uuid.UUID) -> int:
    async with sf() as s:
        return (
            await s.scalar(
                select(func.count())
                .select_from(ProcessedMessage)
                .where(ProcessedMessage.message_id == message_id)
            )
            or 0
        )


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


# --- outbox ---------------------------------------------------------------------------------------


async def outbox_row(sf: async_sessionmaker[AsyncSession], message_id: uuid.UUID) -> OutboxMessage | None:
    """The row, read FOR UPDATE: waits for a relay still holding it to commit its `published_at`."""
    async with sf() as s, s.begin():
        return await s.scalar(
            select(OutboxMessage).where(OutboxMessage.message_id == message_id).with_for_update()
        )


async def test_handler_failure_leaves_neither_row_nor_message(
    channel: AbstractChannel, make_broker: Callable[..., Broker], sf: async_sessionmaker[AsyncSession]
) -> None:
    out = BatchCompleted(batch_id=5, cycle_start=0, cycle_stop=1)
    router = BusRouter()

    @router.handler("scheduler.batch.shard.completed")
    async def fails_after_staging(msg: BatchShardCompleted, ctx: HandlerContext) -> None:
        await add_to_outbox(ctx.session, out)
        raise RuntimeError("after the outbox write")

    broker = make_broker("scheduler")
    settled = outcomes(broker)
    await broker.start(router)
    await broker.publish(BatchShardCompleted(batch_id=5, shard_index=0, job_count=1, ok=True))
    while await next_outcome(settled) != "dead-lettered":
        pass
    assert await outbox_row(sf, out.message_id) is None
    assert broker.relay is not None
    await broker.relay.publish_pending()
    assert await ready_count(channel, "weights.batch.completed") == 0


async def test_handler_success_writes_row_and_publishes(
    channel: AbstractChannel, make_broker: Callable[..., Broker], sf: async_sessionmaker[AsyncSession]
) -> None:
    router = BusRouter()
    out = BatchCompleted(batch_id=6, cycle_start=0, cycle_stop=1)

    @router.handler("scheduler.batch.shard.completed", publishes=(BatchCompleted,))
    async def completes_batch(msg: BatchShardCompleted, ctx: HandlerContext) -> BatchCompleted:
        return out

    delivered = await collect(channel, "weights.batch.completed")
    broker = make_broker("scheduler")
    settled = outcomes(broker)
    await broker.start(router)
    await broker.publish(BatchShardCompleted(batch_id=6, shard_index=0, job_count=1, ok=True))
    assert await next_outcome(settled) == "staged"
    message = await asyncio.wait_for(delivered.get(), T)
    assert BatchCompleted.model_validate_json(message.body) == out
    assert message.message_id == str(out.message_id)
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    row = await outbox_row(sf, out.message_id)
    assert row is not None and row.published_at is not None


async def test_relay_publishes_rows_left_behind_by_a_crashed_relay(
    channel: AbstractChannel, make_broker: Callable[..., Broker], sf: async_sessionmaker[AsyncSession]
) -> None:
    msg = BatchCompleted(batch_id=7, cycle_start=0, cycle_stop=1)
    async with sf() as s, s.begin():  # committed, never published: the process died right after commit
        await add_to_outbox(s, msg)

    broker = make_broker("scheduler")
    await broker.connect()
    relay = OutboxRelay(broker, sf)
    delivered = await collect(channel, "weights.batch.completed")

    # A relay that is still "publishing" holds the row locked: another relay skips it...
    async with sf() as crashed:
        await crashed.execute(
            select(OutboxMessage).where(OutboxMessage.message_id == msg.message_id).with_for_update()
        )
        await relay.publish_pending()
        assert delivered.empty()
        await crashed.rollback()  # ...until that relay dies and its transaction is rolled back.

    assert await relay.publish_pending() >= 1
    message = await asyncio.wait_for(delivered.get(), T)
    assert message.message_id == str(msg.message_id)
    row = await outbox_row(sf, msg.message_id)
    assert row is not None and row.published_at is not None


async def test_relay_run_loop_wakes_on_kick(
    channel: AbstractChannel, make_broker: Callable[..., Broker], sf: async_sessionmaker[AsyncSession]
) -> None:
    broker = make_broker("scheduler")
    await broker.start()  # no router: just the relay
    delivered = await collect(channel, "weights.batch.completed")
    msg = BatchCompleted(batch_id=8, cycle_start=0, cycle_stop=1)
    async with sf() as s, s.begin():
        await add_to_outbox(s, msg)
    broker.kick_outbox()
    message = await asyncio.wait_for(delivered.get(), T)
    assert message.message_id == str(msg.message_id)


# --- tracing --------------------------------------------------------------------------------------


async def test_trace_context_crosses_the_bus_and_the_outbox(
    channel: AbstractChannel, make_broker: Callable[..., Broker]
) -> None:
    seen: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    scheduler, weights = BusRouter(), BusRouter()

    @scheduler.handler("scheduler.batch.shard.completed", publishes=(BatchCompleted,))
    async def on_shard(msg: BatchShardCompleted, ctx: HandlerContext) -> BatchCompleted:
        seen.put_nowait(("scheduler", trace.get_current_span().get_span_context().trace_id))
        return BatchCompleted(batch_id=msg.batch_id, cycle_start=0, cycle_stop=1)

    @weights.handler("weights.batch.completed")
    async def on_batch(msg: BatchCompleted, ctx: HandlerContext) -> None:
        seen.put_nowait(("weights", trace.get_current_span().get_span_context().trace_id))

    await make_broker("scheduler").start(scheduler)
    await make_broker("weights").start(weights)
    producer = make_broker("job-runner", db=False)
    await producer.connect()

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("job-runner finishes a shard") as root:
        await producer.publish(BatchShardCompleted(batch_id=10, shard_index=0, job_count=0, ok=True))
    trace_id = root.get_span_context().trace_id
    assert dict([await asyncio.wait_for(seen.get(), T) for _ in range(2)]) == {
        "scheduler": trace_id,
        "weights": trace_id,
    }


async def test_with_an_sdk_provider_publish_and_process_spans_are_recorded_and_linked(
    channel: AbstractChannel, make_broker: Callable[..., Broker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The span path (an SDK installed) still records a producer span and its child consumer span."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import horde_common.bus.tracing as tracing_module

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing_module, "tracer", provider.get_tracer("test"))
    monkeypatch.setattr(tracing_module, "_sdk_tracing", True)
    handled: asyncio.Queue[int] = asyncio.Queue()
    router = BusRouter()

    @router.handler("weights.batch.completed")
    async def on_batch(msg: BatchCompleted, ctx: HandlerContext) -> None:
        handled.put_nowait(trace.get_current_span().get_span_context().trace_id)

    consumer = make_broker("weights", db=False)
    settled = outcomes(consumer)
    await consumer.start(router)
    producer = make_broker("job-runner", db=False)
    await producer.connect()
    await producer.publish(BatchCompleted(batch_id=11, cycle_start=0, cycle_stop=1))
    trace_id = await asyncio.wait_for(handled.get(), T)
    assert await next_outcome(settled) == "processed"

    spans = {s.name: s for s in exporter.get_finished_spans()}
    publish, process = spans["batch.completed publish"], spans["weights.batch.completed process"]
    assert publish.kind == trace.SpanKind.PRODUCER and process.kind == trace.SpanKind.CONSUMER
    assert publish.context is not None and process.parent is not None
    assert process.parent.span_id == publish.context.span_id
    assert process.context is not None and process.context.trace_id == publish.context.trace_id == trace_id
    assert process.attributes is not None and process.attributes["messaging.destination"]
