"""The shard lease: the pure decision table, claim/heartbeat/release against Postgres, and the handler.

`run_shard` is replaced by a recorder (these tests are about who may run a shard, not about a shard),
so no miner is involved: "run" means the recorder was called. The last two tests go through the real
`Broker` (RabbitMQ + Postgres) with the job-runner's own router, as the service runs it. Every wait is
on an event or a queue with a timeout.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from horde_common.bus import Dependencies, HandlerContext
from horde_common.bus.broker import Broker, Outcome
from horde_common.bus.messages import BatchShardCompleted, BatchShardRequested, MinerEndpoint, ShardDeadlines
from horde_common.bus.topology import declare_topology
from horde_common.config import load_settings
from horde_common.db import create_engine, session_factory
from horde_common.db.models import SystemEvent
from horde_common.db.models.bus import OutboxMessage, ProcessedMessage
from horde_common.db.models.shards import BatchShard
from horde_job_runner.app import router as job_runner_router
from horde_job_runner.synthetic import handler
from horde_job_runner.synthetic.batch import completed_message_id
from horde_job_runner.synthetic.generation import InlineJobFactory
from horde_job_runner.synthetic.handler import JobRunnerRuntime, handle_batch_shard_requested
from horde_job_runner.synthetic.model import BatchDeps, ShardRequest, ShardResult
from horde_job_runner.synthetic.persistence import BatchStore
from horde_job_runner.synthetic.shard_lease import (
    LeaseDecision,
    LeaseLost,
    LeaseWatch,
    ShardRow,
    claim_shard,
    decide,
    lease_verdict,
    lease_wait_bound,
)
from horde_localnet import keys

pytestmark = pytest.mark.timeout(60)

WAIT_S = 15.0  # every wait: milliseconds when it works
SHARD_QUEUE = "job-runner.batch.shard.requested"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
LIVE, LAPSED, SENT = NOW + timedelta(seconds=10), NOW - timedelta(seconds=1), NOW - timedelta(seconds=5)


# --- the pure decision ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "marker", "late", "expected"),
    [
        # nobody ran it: run (unless late)
        (None, False, False, LeaseDecision.RUN),
        (ShardRow("requested", None, None, None), False, False, LeaseDecision.RUN),
        (ShardRow("ready", None, None, None), False, False, LeaseDecision.RUN),
        (None, False, True, LeaseDecision.TOO_LATE),
        (ShardRow("requested", None, None, None), False, True, LeaseDecision.TOO_LATE),
        # a lapsed lease that never reached the miners: run again
        (ShardRow("requested", "dead", LAPSED, None), False, False, LeaseDecision.RUN),
        (ShardRow("requested", "dead", NOW, None), False, False, LeaseDecision.RUN),  # expiry is exclusive
        # a lapsed lease whose miners may have had their initial requests: fail, never resend
        (ShardRow("requested", "dead", LAPSED, SENT), False, False, LeaseDecision.FAIL_CONTACTED),
        (ShardRow("ready", "dead", LAPSED, SENT), False, True, LeaseDecision.FAIL_CONTACTED),
        (ShardRow("requested", None, None, SENT), False, False, LeaseDecision.FAIL_CONTACTED),
        # a live lease: its owner runs and reports it
        (ShardRow("requested", "other", LIVE, None), False, False, LeaseDecision.HELD_ELSEWHERE),
        (ShardRow("ready", "other", LIVE, SENT), False, True, LeaseDecision.HELD_ELSEWHERE),
        # done: report again, whatever the lease says
        (ShardRow("requested", "dead", LAPSED, SENT), True, False, LeaseDecision.ALREADY_DONE),
        (ShardRow("requested", "other", LIVE, SENT), True, True, LeaseDecision.ALREADY_DONE),
        (None, True, False, LeaseDecision.ALREADY_DONE),
        (ShardRow("completed", None, None, None), False, False, LeaseDecision.ALREADY_DONE),
        (ShardRow("failed", "other", LIVE, SENT), False, True, LeaseDecision.ALREADY_DONE),
    ],
)
def test_decision_table(row: ShardRow | None, marker: bool, late: bool, expected: LeaseDecision) -> None:
    assert decide(row, now=NOW, marker=marker, late=late) is expected


# --- claim / heartbeat / release against Postgres -------------------------------------------------


@pytest.fixture(scope="module")
async def sessions(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    yield session_factory(engine)
    await engine.dispose()


async def _row(sessions: async_sessionmaker[AsyncSession], batch_id: int, shard_index: int = 0) -> BatchShard:
    async with sessions() as session:
        row = await session.scalar(
            select(BatchShard).where(BatchShard.batch_id == batch_id, BatchShard.shard_index == shard_index)
        )
    assert row is not None
    return row


async def _db_now(sessions: async_sessionmaker[AsyncSession]) -> datetime:
    async with sessions() as session:
        now = await session.scalar(select(func.now()))
    assert now is not None
    return now


async def _claim(sessions: async_sessionmaker[AsyncSession], batch_id: int, owner: str, **kwargs: Any) -> Any:
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


async def _lapse(sessions: async_sessionmaker[AsyncSession], batch_id: int) -> None:
    """The owner died: its lease lapsed (moved into the past rather than waited for)."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(BatchShard)
            .where(BatchShard.batch_id == batch_id)
            .values(lease_expires_at=func.now() - timedelta(seconds=1))
        )


async def test_claim_creates_the_row_and_takes_the_lease(sessions: async_sessionmaker[AsyncSession]) -> None:
    batch_id, _ = await BatchStore(sessions).create_batch()
    before = await _db_now(sessions)
    claim = await _claim(sessions, batch_id, "runner-a")
    assert claim.decision is LeaseDecision.RUN and claim.lease is not None and claim.attempts == 1
    row = await _row(sessions, batch_id)
    assert (row.state, row.lease_owner, row.attempts, row.miner_hotkeys) == (
        "requested",
        "runner-a",
        1,
        ["5Fminer"],
    )
    assert row.initial_sent_at is not None  # set at claim time (conservative: never re-sent)
    assert row.lease_expires_at is not None and row.lease_heartbeat_at is not None
    assert row.lease_expires_at - row.lease_heartbeat_at == timedelta(seconds=30)
    assert row.lease_heartbeat_at >= before

    # Another runner meanwhile: the lease is live, nothing changes.
    other = await _claim(sessions, batch_id, "runner-b")
    assert other.decision is LeaseDecision.HELD_ELSEWHERE and other.lease is None
    assert (await _row(sessions, batch_id)).attempts == 1


async def test_the_scheduler_row_is_claimed_not_replaced(sessions: async_sessionmaker[AsyncSession]) -> None:
    batch_id, _ = await BatchStore(sessions).create_batch()
    async with sessions() as session, session.begin():
        session.add(
            BatchShard(batch_id=batch_id, shard_index=0, miner_hotkeys=["5Fscheduled"], state="ready")
        )
    claim = await _claim(sessions, batch_id, "runner-a")
    assert claim.decision is LeaseDecision.RUN
    row = await _row(sessions, batch_id)
    assert (row.state, row.miner_hotkeys, row.lease_owner) == ("ready", ["5Fscheduled"], "runner-a")


async def test_heartbeat_renews_and_release_ends_the_lease(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    batch_id, _ = await BatchStore(sessions).create_batch()
    claim = await _claim(sessions, batch_id, "runner-a", ttl_s=0.6)  # a renewal every 0.2 s
    lease = claim.lease
    assert lease is not None
    first_expiry = lease.expires_at
    async with lease.held():
        await asyncio.wait_for(lease.renewed.wait(), WAIT_S)
        renewed = await _row(sessions, batch_id)
        assert renewed.lease_expires_at is not None and renewed.lease_expires_at > first_expiry
        assert renewed.lease_heartbeat_at is not None
        assert renewed.lease_heartbeat_at > first_expiry - timedelta(seconds=0.6)  # after the claim
    released = await _row(sessions, batch_id)
    assert released.lease_owner == "runner-a"  # kept for the record
    assert released.lease_expires_at is not None and released.lease_expires_at <= await _db_now(sessions)
    # A redelivery now: the lease is gone but the miners may have had their requests.
    assert (await _claim(sessions, batch_id, "runner-b")).decision is LeaseDecision.FAIL_CONTACTED


async def test_a_failed_renewal_is_logged_not_fatal(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id, _ = await BatchStore(sessions).create_batch()
    claim = await _claim(sessions, batch_id, "runner-a", ttl_s=0.3)
    lease = claim.lease
    assert lease is not None
    real_renew, failures = lease.renew, asyncio.Event()

    async def flaky_renew() -> bool:
        if not failures.is_set():
            failures.set()
            raise ConnectionError("database blip")
        return await real_renew()

    monkeypatch.setattr(lease, "renew", flaky_renew)
    async with lease.held():
        await asyncio.wait_for(failures.wait(), WAIT_S)
        await asyncio.wait_for(lease.renewed.wait(), WAIT_S)  # the next renewal still lands
    assert lease.renewals >= 1


async def test_renewal_of_a_lease_taken_over_reports_it_lost(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    batch_id, _ = await BatchStore(sessions).create_batch()
    first = await _claim(sessions, batch_id, "runner-a", mark_initial_sent=False)
    assert first.lease is not None
    await _lapse(sessions, batch_id)
    second = await _claim(sessions, batch_id, "runner-b")  # expired, never sent: runs again
    assert second.decision is LeaseDecision.RUN and second.attempts == 2
    assert not await first.lease.renew()
    await first.lease.release()  # not ours any more: leaves runner-b's lease alone
    row = await _row(sessions, batch_id)
    assert row.lease_owner == "runner-b" and row.lease_expires_at is not None
    assert row.lease_expires_at > await _db_now(sessions)


async def test_mark_initial_sent_keeps_the_first_time(sessions: async_sessionmaker[AsyncSession]) -> None:
    batch_id, _ = await BatchStore(sessions).create_batch()
    claim = await _claim(sessions, batch_id, "runner-a", mark_initial_sent=False)
    assert claim.lease is not None
    assert (await _row(sessions, batch_id)).initial_sent_at is None
    await claim.lease.mark_initial_sent()
    first = (await _row(sessions, batch_id)).initial_sent_at
    assert first is not None
    await claim.lease.mark_initial_sent()
    assert (await _row(sessions, batch_id)).initial_sent_at == first


async def test_a_runner_that_lost_its_lease_contacts_no_miner(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """`mark_initial_sent` is the shard's `on_initial_send`: once another runner took the shard, it
    raises, so the old runner never sends initial requests (and the row keeps no send time of it)."""
    batch_id, _ = await BatchStore(sessions).create_batch()
    first = await _claim(sessions, batch_id, "runner-a", mark_initial_sent=False)
    assert first.lease is not None
    await _lapse(sessions, batch_id)
    second = await _claim(sessions, batch_id, "runner-b", mark_initial_sent=False)
    assert second.decision is LeaseDecision.RUN
    with pytest.raises(LeaseLost):
        await first.lease.mark_initial_sent()
    assert (await _row(sessions, batch_id)).initial_sent_at is None


# --- the handler on the lease ---------------------------------------------------------------------


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


def _runtime(
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


def _request(batch_id: int) -> BatchShardRequested:
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


async def _deliver(
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


async def _failures(sessions: async_sessionmaker[AsyncSession], batch_id: int) -> list[SystemEvent]:
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


async def _dead_runner_left(
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


async def test_redelivery_whose_lease_lapsed_before_any_send_runs(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    runtime = _runtime(sessions)
    batch_id, _ = await BatchStore(sessions).create_batch()
    await _dead_runner_left(sessions, batch_id, initial_sent=False)
    msg = _request(batch_id)
    (completed,) = await _deliver(runtime, msg, delivery_count=2)
    assert len(shards.runs) == 1
    assert completed.ok and completed.message_id == completed_message_id(msg.message_id, batch_id, 0)
    row = await _row(sessions, batch_id)
    assert (row.lease_owner, row.attempts) == (runtime.lease_owner, 2)
    assert row.lease_expires_at is not None and row.lease_expires_at <= await _db_now(sessions)  # released
    assert await _failures(sessions, batch_id) == []


async def test_redelivery_after_the_miners_may_have_been_contacted_fails_without_running(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    runtime = _runtime(sessions)
    batch_id, _ = await BatchStore(sessions).create_batch()
    await _dead_runner_left(sessions, batch_id, initial_sent=True)
    (completed,) = await _deliver(runtime, _request(batch_id), delivery_count=2)
    assert shards.runs == []
    assert (completed.ok, completed.job_count) == (False, 0)
    assert "redelivered" in (completed.error or "")
    (failure,) = await _failures(sessions, batch_id)
    assert failure.type == "VALIDATOR_FAILURE" and failure.data["miner_hotkeys"] == ["5Fminer"]
    assert (await _row(sessions, batch_id)).attempts == 1  # not claimed


# --- through the real broker ----------------------------------------------------------------------


@pytest.fixture
async def purged(amqp_url: str) -> AsyncIterator[None]:
    conn = await aio_pika.connect(amqp_url)
    for queue in (await declare_topology(await conn.channel())).values():
        await queue.purge()
    yield
    await conn.close()


class Runner:
    """The job-runner's broker with its own router, bound to a runtime; its settled shard deliveries."""

    def __init__(
        self, amqp_url: str, sessions: async_sessionmaker[AsyncSession], lease_ttl_s: float = 30.0
    ) -> None:
        self.broker = Broker(amqp_url, service="job-runner", session_factory=sessions)
        self.runtime = _runtime(sessions, publish=self.broker.publish, lease_ttl_s=lease_ttl_s)
        self.settled: asyncio.Queue[Outcome] = asyncio.Queue()
        self.broker.settle_listeners.append(
            lambda queue, _id, outcome: self.settled.put_nowait(outcome) if queue == SHARD_QUEUE else None
        )
        self.router = job_runner_router.bind(Dependencies(self.runtime))

    async def next_settled(self) -> Outcome:
        return await asyncio.wait_for(self.settled.get(), WAIT_S)


async def _count(sessions: async_sessionmaker[AsyncSession], model: Any, message_id: uuid.UUID) -> int:
    async with sessions() as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(model).where(model.message_id == message_id)
            )
            or 0
        )


async def test_a_live_lease_elsewhere_runs_nothing_and_publishes_nothing(
    sessions: async_sessionmaker[AsyncSession], amqp_url: str, purged: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    batch_id, _ = await BatchStore(sessions).create_batch()
    other = await _claim(sessions, batch_id, "other-runner", ttl_s=0.6)  # alive: its heartbeat renews
    assert other.lease is not None
    runner = Runner(amqp_url, sessions, lease_ttl_s=0.6)
    msg = _request(batch_id)
    try:
        async with other.lease.held():
            await runner.broker.start(runner.router)
            await runner.broker.publish(msg)
            assert await runner.next_settled() == "processed"  # acked once renewed, nothing staged
    finally:
        await runner.broker.stop(grace_s=0)
    assert shards.runs == []
    assert await _count(sessions, ProcessedMessage, msg.message_id) == 1
    assert await _count(sessions, OutboxMessage, completed_message_id(msg.message_id, batch_id, 0)) == 0
    assert await _failures(sessions, batch_id) == []
    row = await _row(sessions, batch_id)
    assert (row.lease_owner, row.attempts) == ("other-runner", 1)


class Checkouts:
    """Which task holds each checked-out connection of an engine's pool (from the pool's events)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.holders: dict[int, asyncio.Task[Any] | None] = {}
        event.listen(engine.sync_engine.pool, "checkout", self._checkout)
        event.listen(engine.sync_engine.pool, "checkin", self._checkin)

    def _checkout(self, dbapi_conn: Any, record: Any, proxy: Any) -> None:
        self.holders[id(dbapi_conn)] = asyncio.current_task()

    def _checkin(self, dbapi_conn: Any, record: Any) -> None:
        self.holders.pop(id(dbapi_conn), None)

    def held_by_current_task(self) -> int:
        task = asyncio.current_task()
        return sum(1 for holder in self.holders.values() if holder is task)


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
        msg = _request(batch_id)
        await runner.broker.start(runner.router)
        await runner.broker.publish(msg)
        await asyncio.wait_for(shards.entered.wait(), WAIT_S)
        assert held == [0]
        row = await _row(sessions, batch_id)
        assert row.lease_owner == runner.runtime.lease_owner
        assert row.lease_expires_at is not None and row.lease_expires_at > await _db_now(sessions)
        assert await _count(sessions, ProcessedMessage, msg.message_id) == 0  # recorded at the end
        gate.set()
        assert await runner.next_settled() == "staged"
        assert await _count(sessions, ProcessedMessage, msg.message_id) == 1
        assert await _count(sessions, OutboxMessage, completed_message_id(msg.message_id, batch_id, 0)) == 1
        row = await _row(sessions, batch_id)
        assert row.lease_expires_at is not None and row.lease_expires_at <= await _db_now(sessions)
    finally:
        gate.set()
        await runner.broker.stop(grace_s=0)
        await engine.dispose()


# --- a live lease elsewhere: wait until it is renewed or lapses -----------------------------------

LATER = NOW + timedelta(seconds=20)


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (ShardRow("requested", "other", LIVE, SENT), LeaseWatch.WAITING),  # not renewed, not lapsed
        (ShardRow("requested", "other", LATER, SENT), LeaseWatch.RENEWED),  # its heartbeat landed
        (ShardRow("requested", "taker", LATER, SENT), LeaseWatch.RENEWED),  # taken over: a live owner
        (ShardRow("requested", "other", LAPSED, SENT), LeaseWatch.LAPSED),  # owner died
        (ShardRow("requested", "other", NOW, SENT), LeaseWatch.LAPSED),  # expiry is exclusive
        (ShardRow("requested", "other", None, SENT), LeaseWatch.LAPSED),
        (ShardRow("completed", "other", LIVE, SENT), LeaseWatch.LAPSED),  # closed: decide again
        (ShardRow("failed", "other", LATER, SENT), LeaseWatch.LAPSED),
        (None, LeaseWatch.LAPSED),
    ],
)
def test_lease_verdict_table(current: ShardRow | None, expected: LeaseWatch) -> None:
    seen = ShardRow("requested", "other", LIVE, SENT)
    assert lease_verdict(seen, current, now=NOW) is expected


def test_the_wait_is_bounded_by_one_ttl_and_a_reread() -> None:
    assert lease_wait_bound(30.0) == pytest.approx(30.0 + 10.0 + 1.0)
    assert lease_wait_bound(0.6) == pytest.approx(0.6 + 0.2 + 1.0)


def test_the_runtime_lease_ttl_is_a_constructor_argument() -> None:
    with pytest.raises(ValueError, match="lease_ttl_s"):
        handler.job_runner_runtime_with(lease_ttl_s=0)
    assert handler.JobRunnerRuntime.__dataclass_fields__["lease_ttl_s"].default == 30.0


async def _killed_runner_left(
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


async def test_redelivery_under_a_killed_runners_lease_fails_once_it_lapses(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    runtime = _runtime(sessions, lease_ttl_s=0.6)
    batch_id, _ = await BatchStore(sessions).create_batch()
    await _killed_runner_left(sessions, batch_id, live_for_s=0.5, initial_sent=True)
    msg = _request(batch_id)
    loop = asyncio.get_running_loop()
    started = loop.time()
    (completed,) = await asyncio.wait_for(_deliver(runtime, msg, delivery_count=2), WAIT_S)
    assert loop.time() - started <= lease_wait_bound(0.6) + 1.0  # not the shard deadline's minutes
    assert shards.runs == []
    assert (completed.ok, completed.job_count) == (False, 0)
    assert completed.message_id == completed_message_id(msg.message_id, batch_id, 0)
    assert "redelivered" in (completed.error or "")
    (failure,) = await _failures(sessions, batch_id)
    assert failure.type == "VALIDATOR_FAILURE" and failure.data["miner_hotkeys"] == ["5Fminer"]
    row = await _row(sessions, batch_id)
    assert (row.lease_owner, row.attempts) == ("killed-runner", 1)  # never claimed, never re-sent


async def test_redelivery_under_a_killed_runners_lease_runs_if_nothing_was_sent(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    runtime = _runtime(sessions, lease_ttl_s=0.6)
    batch_id, _ = await BatchStore(sessions).create_batch()
    await _killed_runner_left(sessions, batch_id, live_for_s=0.5, initial_sent=False)
    (completed,) = await asyncio.wait_for(_deliver(runtime, _request(batch_id), delivery_count=2), WAIT_S)
    assert len(shards.runs) == 1 and completed.ok
    row = await _row(sessions, batch_id)
    assert (row.lease_owner, row.attempts) == (runtime.lease_owner, 2)
    assert await _failures(sessions, batch_id) == []


async def test_redelivery_under_a_live_owners_lease_acks_silently(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    runtime = _runtime(sessions, lease_ttl_s=0.6)
    batch_id, _ = await BatchStore(sessions).create_batch()
    owner = await _claim(sessions, batch_id, "live-runner", ttl_s=0.6)
    assert owner.lease is not None
    async with owner.lease.held():
        out = await asyncio.wait_for(_deliver(runtime, _request(batch_id), delivery_count=2), WAIT_S)
        assert owner.lease.renewals >= 1  # the verdict came from a renewal, not a lapse
    assert out == [] and shards.runs == []
    assert await _failures(sessions, batch_id) == []
    assert (await _row(sessions, batch_id)).lease_owner == "live-runner"


async def test_a_lease_that_neither_moves_nor_lapses_is_left_to_the_scheduler(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An owner on a longer TTL than ours: the wait gives up at its bound and acks (old behaviour)."""
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    runtime = _runtime(sessions, lease_ttl_s=0.3)
    batch_id, _ = await BatchStore(sessions).create_batch()
    await _killed_runner_left(sessions, batch_id, live_for_s=300, initial_sent=True)
    out = await asyncio.wait_for(_deliver(runtime, _request(batch_id), delivery_count=2), WAIT_S)
    assert out == [] and shards.runs == []
    assert await _failures(sessions, batch_id) == []
