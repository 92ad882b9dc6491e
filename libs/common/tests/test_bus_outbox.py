"""The bus against the real RabbitMQ and Postgres: the outbox and its relay, and tracing across a
publish and its handler.

Every wait is on an event or a queue with a timeout. The `sf`, `channel` and `make_broker` fixtures
are the shared ones of testing/.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.broker import Broker
from horde_common.bus.messages import (
    BatchCompleted,
    BatchShardCompleted,
)
from horde_common.bus.outbox import OutboxRelay, add_to_outbox
from horde_common.bus.router import BusRouter, HandlerContext
from horde_common.db.models.bus import OutboxMessage
from testing.bus_checks import T, collect, next_outcome, outcomes, ready_count


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
