"""The batch coordinator against real Postgres, and the real RabbitMQ where the bus is involved.

The loop body (`coordinate_once`, `sweep`) is driven with explicit head blocks and times, so no
test depends on a clock; the bus tests wait on the broker's settle notifications and on queues,
never on sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.broker import Broker, Outcome
from horde_common.bus.messages import (
    BatchCompleted,
    BatchReleased,
    BatchShardCompleted,
    BatchShardReady,
    BatchShardRequested,
)
from horde_common.bus.topology import EXCHANGE, declare_topology
from horde_common.db import create_engine, session_factory
from horde_common.db.migrate import upgrade
from horde_common.db.models import BatchShard, Cycle, Neuron, OutboxMessage, SyntheticJobBatch, SystemEvent
from horde_common.dynamic_config import DynamicConfig
from horde_scheduler.app import router
from horde_scheduler.batch_barrier import shard_completed
from horde_scheduler.coordination import CoordinatorParams
from horde_scheduler.coordinator import CoordinatorState, coordinate_once, sweep
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


@pytest.fixture(scope="module")
def coordinator_database_url(make_database: Callable[[], str]) -> str:
    """A database of this module's own, so clearing its tables never touches another test's rows."""
    url = make_database()
    upgrade(url)
    return url


@pytest.fixture()
async def sessions(coordinator_database_url: str) -> AsyncIterator[Sessions]:
    engine = create_engine(coordinator_database_url)
    factory = session_factory(engine)
    async with factory.begin() as session:
        await session.execute(
            text(
                "TRUNCATE neurons, cycles, synthetic_job_batches, batch_shards, system_events, outbox,"
                " processed_messages CASCADE"
            )
        )
    try:
        yield factory
    finally:
        await engine.dispose()


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


# --- dispatch -----------------------------------------------------------------------------------------


async def test_due_batch_is_split_into_shards_with_their_requests(sessions: Sessions) -> None:
    await store_neurons(sessions, BLOCK - 7, NEURONS[:2])  # an older snapshot is not used
    batch_id = await dispatched_batch(sessions, shard_size=2)

    rows = await shards(sessions, batch_id)
    assert [(s.shard_index, s.miner_hotkeys, s.state) for s in rows] == [
        (0, ["m0", "m1"], "requested"),
        (1, ["m4", "m5"], "requested"),
        (2, ["m6"], "requested"),
    ]
    assert {s.deadline_at for s in rows} == {SHARD_DEADLINE}
    assert (await batch_row(sessions, batch_id)).shard_count == 3

    requests = [
        BatchShardRequested.model_validate(b) for b in await outbox(sessions, "batch.shard.requested")
    ]
    assert [(r.shard_index, r.shard_count) for r in requests] == [(0, 3), (1, 3), (2, 3)]
    first = requests[0]
    assert (first.batch_id, first.cycle_start, first.cycle_stop) == (batch_id, CYCLE.start, CYCLE.stop)
    assert [(m.hotkey, m.uid, m.address, m.port) for m in first.miners] == [
        ("m0", 0, "10.0.0.1", 8000),
        ("m1", 1, "10.0.0.2", 8001),
    ]
    assert {(r.deadlines.accept_deadline, r.deadlines.release_deadline) for r in requests} == {
        (ACCEPT, RELEASE)
    }
    assert first.weights_version == DynamicConfig.defaults().weights_version


async def test_one_shard_for_all_miners_by_default(sessions: Sessions) -> None:
    batch_id = await dispatched_batch(sessions, shard_size=None)
    [only] = await shards(sessions, batch_id)
    assert only.miner_hotkeys == ["m0", "m1", "m4", "m5", "m6"]  # not ours, not the idle one
    assert len(await outbox(sessions, "batch.shard.requested")) == 1


async def test_dispatch_happens_once(sessions: Sessions) -> None:
    batch_id = await dispatched_batch(sessions)
    again = await run_pass(sessions, now=T0 + timedelta(seconds=1))
    assert again.due is None and again.dispatched is None
    assert len(await shards(sessions, batch_id)) == 3


async def test_no_serving_miner_completes_at_once(sessions: Sessions) -> None:
    await store_neurons(sessions, BLOCK, [(0, OWN, "10.0.0.3", 8002, True), (1, "idle", "0.0.0.0", 0, False)])
    batch_id = await add_batch(sessions)
    outcome = await run_pass(sessions)
    assert outcome.dispatched is not None and outcome.dispatched.shard_count == 0
    assert await shards(sessions, batch_id) == []
    row = await batch_row(sessions, batch_id)
    assert (row.completed_at, row.shard_count) == (T0, 0)
    assert await outbox(sessions, "batch.shard.requested") == []
    [done] = [BatchCompleted.model_validate(b) for b in await outbox(sessions, "batch.completed")]
    assert (done.batch_id, done.cycle_start, done.cycle_stop) == (batch_id, CYCLE.start, CYCLE.stop)


# --- deadlines ----------------------------------------------------------------------------------------


async def test_release_at_the_deadline_when_not_every_shard_is_ready(sessions: Sessions) -> None:
    batch_id = await dispatched_batch(sessions)
    await sweep(sessions, now=RELEASE - timedelta(seconds=1), params=PARAMS)
    assert await outbox(sessions, "batch.released") == []
    outcome = await sweep(sessions, now=RELEASE, params=PARAMS)
    assert outcome.released == (batch_id,)
    await sweep(sessions, now=RELEASE + timedelta(seconds=5), params=PARAMS)
    [released] = [BatchReleased.model_validate(b) for b in await outbox(sessions, "batch.released")]
    assert (released.batch_id, released.released_at) == (batch_id, RELEASE)


async def test_a_silent_shard_fails_at_its_deadline_and_the_batch_completes(sessions: Sessions) -> None:
    batch_id = await dispatched_batch(sessions)
    async with sessions.begin() as s:
        for index in (0, 1):
            msg = BatchShardCompleted(batch_id=batch_id, shard_index=index, job_count=3, ok=True)
            await shard_completed(s, msg, now=T0 + timedelta(seconds=600))
    grace = timedelta(seconds=PARAMS.completion_grace_s)

    await sweep(sessions, now=SHARD_DEADLINE + grace, params=PARAMS)  # not past the grace yet
    assert [s.state for s in await shards(sessions, batch_id)] == ["completed", "completed", "requested"]

    late = SHARD_DEADLINE + grace + timedelta(seconds=1)
    outcome = await sweep(sessions, now=late, params=PARAMS)
    assert (outcome.failed_shards, outcome.completed) == (((batch_id, 2),), (batch_id,))
    assert [s.state for s in await shards(sessions, batch_id)] == ["completed", "completed", "failed"]
    [event] = await all_rows(sessions, SystemEvent, SystemEvent.type == "VALIDATOR_FAILURE")
    assert (event.subtype, event.data["miner_hotkeys"], event.data["shard_index"]) == (
        "GENERIC_ERROR",
        ["m6"],
        2,
    )
    assert await all_rows(sessions, SystemEvent, SystemEvent.type == "MINER_SYNTHETIC_JOB_FAILURE") == []
    assert (await batch_row(sessions, batch_id)).completed_at == late
    assert [b["batch_id"] for b in await outbox(sessions, "batch.completed")] == [batch_id]

    # The runner's report arrives after all: ignored, nothing published again.
    async with sessions.begin() as s:
        msg = BatchShardCompleted(batch_id=batch_id, shard_index=2, job_count=1, ok=True)
        assert await shard_completed(s, msg, now=late + timedelta(seconds=1)) == []
    assert (await shards(sessions, batch_id))[2].state == "failed"
    await sweep(sessions, now=late + timedelta(seconds=2), params=PARAMS)
    assert len(await outbox(sessions, "batch.completed")) == 1


async def test_lost_dispatch_is_given_up(sessions: Sessions) -> None:
    batch_id = await add_batch(sessions)
    async with sessions.begin() as s:  # started by `due_batches`, then the scheduler died
        row = await s.get(SyntheticJobBatch, batch_id)
        assert row is not None
        row.started_at = T0
    await sweep(sessions, now=T0 + timedelta(seconds=PARAMS.undispatched_after_s - 1), params=PARAMS)
    assert (await batch_row(sessions, batch_id)).completed_at is None
    outcome = await sweep(
        sessions, now=T0 + timedelta(seconds=PARAMS.undispatched_after_s + 1), params=PARAMS
    )
    assert outcome.given_up == (batch_id,)
    assert len(await all_rows(sessions, SystemEvent, SystemEvent.type == "VALIDATOR_FAILURE")) == 1
    assert [b["batch_id"] for b in await outbox(sessions, "batch.completed")] == [batch_id]


# --- the due batch ------------------------------------------------------------------------------------


async def test_a_block_that_never_comes_is_a_failed_wait(sessions: Sessions) -> None:
    await store_neurons(sessions, BLOCK)
    batch_id = await add_batch(sessions, BLOCK + 1)
    state = CoordinatorState()
    polls = (await run_pass(sessions, state=state)).due.plan.max_polls
    assert polls == 6  # one block of 12 s, twice over, every 4 s
    for _ in range(polls - 1):
        assert (await run_pass(sessions, state=state)).failed_to_wait is None
    assert (await run_pass(sessions, state=state)).failed_to_wait == batch_id
    [event] = await all_rows(sessions, SystemEvent, SystemEvent.subtype == "FAILED_TO_WAIT")
    assert (event.type, event.data["block"]) == ("VALIDATOR_SYNTHETIC_JOBS_FAILURE", BLOCK + 1)
    assert (await batch_row(sessions, batch_id)).started_at is None
    reached = await run_pass(sessions, head=BLOCK + 1, state=state)
    assert reached.dispatched is not None and reached.dispatched.batch_id == batch_id


async def test_no_chain_still_applies_deadlines(sessions: Sessions) -> None:
    batch_id = await dispatched_batch(sessions)
    outcome = await run_pass(sessions, head=None, now=RELEASE)
    assert outcome.due is None and outcome.sweep.released == (batch_id,)


async def test_unstaggered_batches_start_one_at_a_time(sessions: Sessions) -> None:
    await store_neurons(sessions, BLOCK)
    state = CoordinatorState()
    first = await run_pass(sessions, head=None, state=state, dont_stagger=True)
    assert first.dispatched is not None and first.dispatched.shard_count == 1
    interval = timedelta(seconds=PARAMS.unstaggered_interval_s)
    assert (await run_pass(sessions, now=T0 + interval / 2, state=state, dont_stagger=True)).due is None
    assert (
        await run_pass(sessions, now=T0 + interval, state=state, dont_stagger=True)
    ).due is None  # in flight
    [request] = [
        BatchShardRequested.model_validate(b) for b in await outbox(sessions, "batch.shard.requested")
    ]
    assert (request.batch_id, request.cycle_start, request.cycle_stop) == (first.dispatched.batch_id, 0, 0)


# --- over the bus ---------------------------------------------------------------------------------------


@pytest.fixture()
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    for queue in (await declare_topology(ch)).values():
        await queue.purge()
    yield ch
    await conn.close()


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
