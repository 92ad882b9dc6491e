"""`long_running=True` handlers against the real RabbitMQ and Postgres: no connection held while they run.

The pool's checkout/checkin events record which asyncio task holds each connection, so a handler can
assert that its own delivery holds none (the outbox relay of the same broker may hold one briefly at
any moment, which is why the pool-wide `checkedout()` alone would be a flaky witness); Postgres'
`pg_stat_activity` confirms that no backend of the database sits idle in a transaction. Every wait is
on an event or a queue with a timeout. `channel` and `make_broker` are the shared fixtures of
testing/; `sf` here is on an engine whose checkouts the tests watch.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from horde_common.bus.broker import Broker, Outcome
from horde_common.bus.messages import BatchCompleted, BatchShardCompleted
from horde_common.bus.router import BusRouter, HandlerContext
from horde_common.db import create_engine, session_factory
from horde_common.db.models.bus import OutboxMessage, ProcessedMessage
from horde_common.db.models.events import SystemEvent
from testing.bus_checks import collect
from testing.checkouts import Checkouts

T = 15.0  # generous timeout of every wait; tests normally finish in milliseconds


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sf(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


def outcomes(broker: Broker) -> asyncio.Queue[Outcome]:
    q: asyncio.Queue[Outcome] = asyncio.Queue()
    broker.settle_listeners.append(lambda _queue, _id, outcome: q.put_nowait(outcome))
    return q


async def next_outcome(q: asyncio.Queue[Outcome]) -> Outcome:
    return await asyncio.wait_for(q.get(), T)


async def count(sf: async_sessionmaker[AsyncSession], model: Any, message_id: uuid.UUID) -> int:
    async with sf() as s:
        return int(
            await s.scalar(select(func.count()).select_from(model).where(model.message_id == message_id)) or 0
        )


async def idle_in_transaction(sf: async_sessionmaker[AsyncSession]) -> int:
    """Backends of this database (other than the asking one) idle inside an open transaction."""
    async with sf() as s:
        return int(
            await s.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state = 'idle in transaction'"
                )
            )
            or 0
        )


async def test_long_running_handler_holds_no_connection_and_its_result_lands_once(
    channel: AbstractChannel,
    make_broker: Callable[..., Broker],
    engine: AsyncEngine,
    sf: async_sessionmaker[AsyncSession],
) -> None:
    checkouts = Checkouts(engine)
    running, finish = asyncio.Event(), asyncio.Event()
    seen: dict[str, Any] = {}
    router = BusRouter()
    out = BatchCompleted(batch_id=21, cycle_start=0, cycle_stop=1)

    @router.handler("scheduler.batch.shard.completed", publishes=(BatchCompleted,), long_running=True)
    async def slow(msg: BatchShardCompleted, ctx: HandlerContext) -> BatchCompleted:
        seen["db_session"] = ctx.db_session
        seen["held_at_start"] = checkouts.held_by_current_task()
        with pytest.raises(RuntimeError, match="long_running"):
            ctx.session  # noqa: B018 - the property refuses: no transaction is held
        assert ctx.sessions is not None
        async with ctx.sessions() as s:  # a short transaction of its own still works
            seen["own_query"] = await s.scalar(select(func.count()).select_from(ProcessedMessage))
            seen["held_in_own_query"] = checkouts.held_by_current_task()  # the witness does see it
        seen["held_after_own_query"] = checkouts.held_by_current_task()
        running.set()
        await finish.wait()
        return out

    delivered = await collect(channel, "weights.batch.completed")
    broker = make_broker("scheduler")
    settled = outcomes(broker)
    await broker.start(router)
    sent = BatchShardCompleted(batch_id=21, shard_index=0, job_count=1, ok=True)
    await broker.publish(sent)
    await asyncio.wait_for(running.wait(), T)
    # While the handler runs: no connection checked out for it, no transaction open anywhere for it.
    assert seen["db_session"] is None
    assert seen["held_at_start"] == seen["held_after_own_query"] == 0
    assert seen["held_in_own_query"] == 1
    assert await idle_in_transaction(sf) == 0
    assert await count(sf, ProcessedMessage, sent.message_id) == 0  # not recorded until it finishes
    finish.set()

    assert await next_outcome(settled) == "staged"
    message = await asyncio.wait_for(delivered.get(), T)
    assert message.message_id == str(out.message_id)
    assert await count(sf, ProcessedMessage, sent.message_id) == 1
    assert await count(sf, OutboxMessage, out.message_id) == 1


async def test_duplicate_arriving_while_it_runs_is_skipped_and_the_result_staged_once(
    channel: AbstractChannel, make_broker: Callable[..., Broker], sf: async_sessionmaker[AsyncSession]
) -> None:
    calls: list[int] = []
    running, finish = asyncio.Event(), asyncio.Event()
    router = BusRouter()
    out = BatchCompleted(batch_id=22, cycle_start=0, cycle_stop=1)

    @router.handler("scheduler.batch.shard.completed", publishes=(BatchCompleted,), long_running=True)
    async def slow(msg: BatchShardCompleted, ctx: HandlerContext) -> BatchCompleted:
        calls.append(ctx.delivery_count)
        running.set()
        await finish.wait()
        return out

    broker = make_broker("scheduler")
    settled = outcomes(broker)
    await broker.start(router)
    sent = BatchShardCompleted(batch_id=22, shard_index=0, job_count=1, ok=True)
    await broker.publish(sent)
    await asyncio.wait_for(running.wait(), T)
    await broker.publish(sent)  # the same message id again (a relay retry upstream)
    finish.set()
    assert sorted([await next_outcome(settled), await next_outcome(settled)]) == ["duplicate", "staged"]
    assert calls == [1]
    assert await count(sf, ProcessedMessage, sent.message_id) == 1
    assert await count(sf, OutboxMessage, out.message_id) == 1


async def test_deferred_writes_commit_with_the_delivery_and_a_failure_leaves_nothing(
    channel: AbstractChannel, make_broker: Callable[..., Broker], sf: async_sessionmaker[AsyncSession]
) -> None:
    marker = uuid.uuid4().hex
    attempts: list[int] = []
    router = BusRouter()

    @router.handler("scheduler.batch.shard.completed", long_running=True)
    async def writes(msg: BatchShardCompleted, ctx: HandlerContext) -> None:
        attempts.append(ctx.delivery_count)

        async def event_row(session: AsyncSession) -> None:
            session.add(SystemEvent(type="TEST", subtype=marker, long_description="", data={}))

        ctx.defer_write(event_row)
        if ctx.delivery_count == 1:
            raise RuntimeError("fails after deferring: the write must not land")

    broker = make_broker("scheduler")
    settled = outcomes(broker)
    await broker.start(router)
    sent = BatchShardCompleted(batch_id=23, shard_index=0, job_count=0, ok=True)
    await broker.publish(sent)
    assert await next_outcome(settled) == "requeued"
    assert await next_outcome(settled) == "processed"
    assert attempts == [1, 2]
    async with sf() as s:
        rows = (await s.scalars(select(SystemEvent).where(SystemEvent.subtype == marker))).all()
    assert len(rows) == 1
    assert await count(sf, ProcessedMessage, sent.message_id) == 1


async def test_a_concurrent_delivery_elsewhere_that_committed_first_does_not_drop_the_result(
    channel: AbstractChannel, make_broker: Callable[..., Broker], sf: async_sessionmaker[AsyncSession]
) -> None:
    """Another replica recorded the message (its handler returned nothing) while this one ran."""
    running, finish = asyncio.Event(), asyncio.Event()
    router = BusRouter()
    out = BatchCompleted(batch_id=24, cycle_start=0, cycle_stop=1)

    @router.handler("scheduler.batch.shard.completed", publishes=(BatchCompleted,), long_running=True)
    async def slow(msg: BatchShardCompleted, ctx: HandlerContext) -> BatchCompleted:
        running.set()
        await finish.wait()
        return out

    broker = make_broker("scheduler")
    settled = outcomes(broker)
    await broker.start(router)
    sent = BatchShardCompleted(batch_id=24, shard_index=0, job_count=1, ok=True)
    await broker.publish(sent)
    await asyncio.wait_for(running.wait(), T)
    async with sf() as s, s.begin():  # the other replica's final transaction
        s.add(ProcessedMessage(queue="scheduler.batch.shard.completed", message_id=sent.message_id))
    finish.set()
    assert await next_outcome(settled) == "staged"
    assert await count(sf, OutboxMessage, out.message_id) == 1


def test_long_running_is_declared_per_route_and_survives_bind() -> None:
    router = BusRouter()

    @router.handler("scheduler.batch.shard.completed", long_running=True)
    async def slow(msg: BatchShardCompleted, ctx: HandlerContext) -> None:
        return None

    @router.handler("weights.batch.completed")
    async def quick(msg: BatchCompleted, ctx: HandlerContext) -> None:
        return None

    from horde_common.bus.router import Dependencies

    for r in (router, router.bind(Dependencies())):
        assert r.routes["scheduler.batch.shard.completed"].long_running
        assert not r.routes["weights.batch.completed"].long_running


def test_a_long_running_context_refuses_session_and_defers_writes_once() -> None:
    ctx = HandlerContext(
        queue="q", message_id=uuid.uuid4(), redelivered=False, delivery_count=1, sessions=async_sessionmaker()
    )
    with pytest.raises(RuntimeError, match="long_running"):
        ctx.session  # noqa: B018
    ran: list[AsyncSession] = []

    async def write(session: AsyncSession) -> None:
        ran.append(session)

    ctx.defer_write(write)
    session = AsyncSession()
    asyncio.run(ctx.run_deferred_writes(session))
    asyncio.run(ctx.run_deferred_writes(session))
    assert ran == [session]
