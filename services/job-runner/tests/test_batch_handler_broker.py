"""The shard handler as the service runs it: through the real `Broker`, RabbitMQ and Postgres.

No hand-built `HandlerContext`: the job-runner's own router consumes `batch.shard.requested` from
its quorum queue as a `long_running` handler (no transaction held while the shard runs; idempotency
row + outbox in the delivery's final transaction), against simulated miners.
A second `Broker` plays the scheduler: it publishes the request, answers `batch.shard.ready` with
`batch.released` and collects `batch.shard.completed`. Then the same message comes again, twice:
published anew with the same message id (the broker's idempotency row drops it), and requeued by
RabbitMQ after the consumer died mid-shard (its lease is released but `initial_sent_at` is set, so
the handler reports it failed and does not re-run it).
Either way no miner gets a second set of jobs.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from horde_common.bus import BusMessage, BusRouter, Dependencies, HandlerContext
from horde_common.bus.broker import Broker, Outcome
from horde_common.bus.messages import (
    BatchReleased,
    BatchShardCompleted,
    BatchShardReady,
    BatchShardRequested,
    MinerEndpoint,
    ShardDeadlines,
)
from horde_common.config import load_settings
from horde_common.db.models import SyntheticJob, SystemEvent
from horde_job_runner.app import router as job_runner_router
from horde_job_runner.synthetic.generation import InlineJobFactory
from horde_job_runner.synthetic.handler import JobRunnerRuntime, ReleaseRegistry
from horde_job_runner.synthetic.model import BatchTimeouts
from horde_job_runner.synthetic.persistence import BatchStore
from horde_localnet import keys
from horde_localnet.miners import MinerFleet

pytestmark = pytest.mark.timeout(120)

AO = "always_on.gpu-24gb"
FAST = BatchTimeouts(
    manifest=3.0, job_wait_extra=1.0, spin_up={AO: 1.0}, job_timeout=2.0, persist_backoff=0.01
)
MINERS = 2
# Every wait on the bus or a miner: far above a healthy round trip (milliseconds) and a localnet
# shard (~2 s with FAST), short enough that a lost message fails the test well inside its timeout.
WAIT_S = 30.0
JOB_REQUEST = "V0InitialJobRequest"  # one per job: a second set of jobs would send these again
SHARD_QUEUE = "job-runner.batch.shard.requested"


class Scheduler:
    """The scheduler's side of the bus, on its own connection: releases ready shards, collects results."""

    def __init__(self, amqp_url: str) -> None:
        self.ready: list[BatchShardReady] = []
        self.completed: asyncio.Queue[BatchShardCompleted] = asyncio.Queue()
        router = BusRouter()

        @router.handler("scheduler.batch.shard.ready", publishes=(BatchReleased,))
        async def on_ready(msg: BatchShardReady, ctx: HandlerContext) -> list[BusMessage]:
            self.ready.append(msg)
            return [BatchReleased(batch_id=msg.batch_id, released_at=datetime.now(UTC))]

        @router.handler("scheduler.batch.shard.completed")
        async def on_completed(msg: BatchShardCompleted, ctx: HandlerContext) -> None:
            await self.completed.put(msg)

        self.router = router
        self.broker = Broker(amqp_url, service="scheduler")  # no database: replies go out directly

    async def next_completed(self) -> BatchShardCompleted:
        return await asyncio.wait_for(self.completed.get(), WAIT_S)


class JobRunner:
    """The job-runner's broker with the service's own router (bound to its runtime), and its settled
    deliveries."""

    def __init__(self, amqp_url: str, sessions: Any) -> None:
        self.broker = Broker(amqp_url, service="job-runner", session_factory=sessions)
        self.settled: asyncio.Queue[Outcome] = asyncio.Queue()
        self.broker.settle_listeners.append(self._on_settled)
        runtime = JobRunnerRuntime(
            sessions=sessions,
            keypair=keys.validator_keypair(0),
            settings=load_settings(SYNTHETIC_HASHCAT_DIFFICULTY="localnet"),
            publish=self.broker.publish,
            releases=ReleaseRegistry(),
            job_factory=InlineJobFactory(),
            timeouts=FAST,
        )
        self.router = job_runner_router.bind(Dependencies(runtime))

    def _on_settled(self, queue: str, message_id: str | None, outcome: Outcome) -> None:
        if queue == SHARD_QUEUE:
            self.settled.put_nowait(outcome)

    async def next_settled(self) -> Outcome:
        return await asyncio.wait_for(self.settled.get(), WAIT_S)


def _request(batch_id: int, fleet: MinerFleet) -> BatchShardRequested:
    now = datetime.now(UTC)
    return BatchShardRequested(
        batch_id=batch_id,
        shard_index=0,
        shard_count=1,
        cycle_start=0,
        cycle_stop=722,
        miners=[
            MinerEndpoint(hotkey=m.hotkey, uid=m.index, address="127.0.0.1", port=m.port)
            for m in fleet.miners
        ],
        deadlines=ShardDeadlines(
            accept_deadline=now + timedelta(seconds=1.5), release_deadline=now + timedelta(seconds=30)
        ),
        weights_version=4,
    )


def _job_requests(fleet: MinerFleet) -> list[int]:
    return [sum(1 for _, kind in m.received if kind == JOB_REQUEST) for m in fleet.miners]


async def _jobs(sessions: Any, batch_id: int) -> list[SyntheticJob]:
    async with sessions() as session:
        return list(
            (await session.scalars(select(SyntheticJob).where(SyntheticJob.batch_id == batch_id))).all()
        )


async def _events(sessions: Any, batch_id: int, subtype: str) -> list[SystemEvent]:
    async with sessions() as session:
        result = await session.scalars(
            select(SystemEvent).where(
                SystemEvent.subtype == subtype, SystemEvent.data["batch_id"].as_integer() == batch_id
            )
        )
        return list(result.all())


async def _count_events(sessions: Any) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(SystemEvent)) or 0)


async def test_shard_runs_through_the_broker_and_a_republished_request_is_dropped(
    sessions: Any, vhost_url: str
) -> None:
    scheduler, runner = Scheduler(vhost_url), JobRunner(vhost_url, sessions)
    batch_id, _ = await BatchStore(sessions).create_batch()
    try:
        await scheduler.broker.start(scheduler.router)
        await runner.broker.start(runner.router)
        async with MinerFleet(MINERS, executors={AO: 1}, first_index=440) as fleet:
            msg = _request(batch_id, fleet)
            await scheduler.broker.publish(msg)

            done = await scheduler.next_completed()
            assert await runner.next_settled() == "staged"  # committed with its outbox row, acked
            assert (done.batch_id, done.shard_index, done.ok, done.job_count) == (batch_id, 0, True, MINERS)
            assert [r.batch_id for r in scheduler.ready] == [batch_id]  # released over the bus
            jobs = await _jobs(sessions, batch_id)
            assert sorted(j.status for j in jobs) == ["COMPLETED"] * MINERS
            assert _job_requests(fleet) == [1] * MINERS
            (batch_event,) = await _events(sessions, batch_id, "SYNTHETIC_BATCH")
            assert batch_event.data["release"] == "released"
            assert batch_event.data["shard_message_id"] == str(msg.message_id)

            # The scheduler publishes the same request again (its outbox relay retried after a lost
            # confirm): same message id, so the idempotency row drops it before the handler.
            connections = [m.connection_count for m in fleet.miners]
            events = await _count_events(sessions)
            await scheduler.broker.publish(msg)
            assert await runner.next_settled() == "duplicate"
            assert _job_requests(fleet) == [1] * MINERS
            assert [m.connection_count for m in fleet.miners] == connections
            assert sorted(j.job_uuid for j in await _jobs(sessions, batch_id)) == sorted(
                j.job_uuid for j in jobs
            )
            assert await _count_events(sessions) == events
            assert scheduler.completed.empty()
    finally:
        await runner.broker.stop(grace_s=0)
        await scheduler.broker.stop(grace_s=0)


async def test_shard_requeued_after_the_consumer_died_is_not_run_again(sessions: Any, vhost_url: str) -> None:
    scheduler, first = Scheduler(vhost_url), JobRunner(vhost_url, sessions)
    batch_id, _ = await BatchStore(sessions).create_batch()
    second: JobRunner | None = None
    try:
        await scheduler.broker.start(scheduler.router)
        await first.broker.start(first.router)
        async with MinerFleet(MINERS, executors={AO: 1}, first_index=450) as fleet:
            msg = _request(batch_id, fleet)
            await scheduler.broker.publish(msg)
            # The first job-runner dies once every miner has its job, before the shard is stored:
            # its handler is cancelled, its transaction rolls back, RabbitMQ requeues the message.
            for miner in fleet.miners:
                await miner.wait_for(lambda m=miner: any(k == JOB_REQUEST for _, k in m.received), WAIT_S)
            await first.broker.stop(grace_s=0)
            assert first.settled.empty(), "the delivery must not have been settled"
            assert _job_requests(fleet) == [1] * MINERS

            second = JobRunner(vhost_url, sessions)  # the restarted process
            await second.broker.start(second.router)
            done = await scheduler.next_completed()
            assert await second.next_settled() == "staged"
            assert (done.batch_id, done.ok, done.job_count) == (batch_id, False, 0)
            assert "redelivered" in (done.error or "")
            assert _job_requests(fleet) == [1] * MINERS  # no second set of jobs
            (failure,) = await _events(sessions, batch_id, "GENERIC_ERROR")
            assert failure.type == "VALIDATOR_FAILURE"  # our crash, not the miners' fault
            assert failure.data["shard_message_id"] == str(msg.message_id)
            assert await _jobs(sessions, batch_id) == []  # nothing stored against the miners
    finally:
        if second is not None:
            await second.broker.stop(grace_s=0)
        await first.broker.stop(grace_s=0)
        await scheduler.broker.stop(grace_s=0)
