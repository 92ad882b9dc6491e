"""The bus handlers of synthetic shards: ready → released → completed, fallback, redelivery, markers.

The handlers are called as the broker calls a `long_running` handler (a `HandlerContext` with the
session factory and no session; the deferred writes then run in a final transaction); the
"scheduler" is a fake publisher that answers `batch.shard.ready` with `batch.released`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from horde_common.bus.messages import (
    BatchReleased,
    BatchShardCompleted,
    BatchShardReady,
    BatchShardRequested,
    BusMessage,
    MinerEndpoint,
    ShardDeadlines,
)
from horde_common.bus.router import Dependencies, HandlerContext
from horde_common.config import load_settings
from horde_common.db.models import SyntheticJob, SystemEvent
from horde_common.db.models.shards import BatchShard
from horde_job_runner.synthetic.batch import completed_message_id, ready_message_id
from horde_job_runner.synthetic.generation import InlineJobFactory
from horde_job_runner.synthetic.handler import (
    JobRunnerRuntime,
    ReleaseRegistry,
    handle_batch_released,
    handle_batch_shard_requested,
)
from horde_job_runner.synthetic.model import BatchTimeouts
from horde_job_runner.synthetic.persistence import BatchStore
from horde_localnet import keys
from horde_localnet.miners import MinerFleet

pytestmark = pytest.mark.timeout(60)

AO = "always_on.gpu-24gb"
FAST = BatchTimeouts(
    manifest=3.0, job_wait_extra=1.0, spin_up={AO: 1.0}, job_timeout=2.0, persist_backoff=0.01
)


class FakeScheduler:
    """Records what the job-runner publishes; answers a ready report with a release (if asked to)."""

    def __init__(self, release: bool = True) -> None:
        self.published: list[BusMessage] = []
        self.release = release
        self.runtime: JobRunnerRuntime | None = None  # the job-runner it answers (set by `_runtime`)

    async def publish(self, msg: BusMessage) -> None:
        self.published.append(msg)
        if self.release and isinstance(msg, BatchShardReady):
            released = BatchReleased(batch_id=msg.batch_id, released_at=datetime.now(UTC))
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(
                    handle_batch_released(released, _ctx(released, runtime=self.runtime))
                )
            )


def _ctx(
    msg: BusMessage, sessions: Any = None, delivery_count: int = 1, runtime: JobRunnerRuntime | None = None
) -> HandlerContext:
    return HandlerContext(
        queue=f"job-runner.{msg.ROUTING_KEY}",
        message_id=msg.message_id,
        redelivered=delivery_count > 1,
        delivery_count=delivery_count,
        sessions=sessions,
        dependencies=Dependencies(runtime) if runtime is not None else Dependencies(),
    )


def _runtime(sessions: Any, scheduler: FakeScheduler | None) -> JobRunnerRuntime:
    runtime = JobRunnerRuntime(
        sessions=sessions,
        keypair=keys.validator_keypair(0),
        settings=load_settings(SYNTHETIC_HASHCAT_DIFFICULTY="localnet"),
        publish=scheduler.publish if scheduler is not None else None,
        releases=ReleaseRegistry(),
        job_factory=InlineJobFactory(),
        timeouts=FAST,
    )
    if scheduler is not None:
        scheduler.runtime = runtime
    return runtime


def _request(batch_id: int, fleet: MinerFleet, *, accept_in: float, release_in: float) -> BatchShardRequested:
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
            accept_deadline=now + timedelta(seconds=accept_in),
            release_deadline=now + timedelta(seconds=release_in),
        ),
        weights_version=4,
    )


async def _handle(
    runtime: JobRunnerRuntime, msg: BatchShardRequested, delivery_count: int = 1
) -> list[BatchShardCompleted]:
    ctx = _ctx(msg, runtime.sessions, delivery_count, runtime)
    out = await handle_batch_shard_requested(msg, ctx)
    async with runtime.sessions() as session, session.begin():  # the consumer's final transaction
        await ctx.run_deferred_writes(session)
    return out


async def _earlier_delivery_contacted_the_miners(sessions: Any, batch_id: int) -> None:
    """What a first delivery that died mid-shard leaves: its lease lapsed, `initial_sent_at` set."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(BatchShard)
            .where(BatchShard.batch_id == batch_id, BatchShard.shard_index == 0)
            .values(
                lease_owner="dead-runner",
                lease_expires_at=datetime.now(UTC) - timedelta(seconds=1),
                initial_sent_at=datetime.now(UTC) - timedelta(seconds=5),
                attempts=1,
            )
        )


async def _batch_event(sessions: Any, batch_id: int, subtype: str) -> list[SystemEvent]:
    async with sessions() as session:
        result = await session.scalars(
            select(SystemEvent).where(
                SystemEvent.subtype == subtype, SystemEvent.data["batch_id"].as_integer() == batch_id
            )
        )
        return list(result.all())


async def _jobs(sessions: Any, batch_id: int) -> list[SyntheticJob]:
    async with sessions() as session:
        return list(
            (await session.scalars(select(SyntheticJob).where(SyntheticJob.batch_id == batch_id))).all()
        )


async def test_shard_reports_ready_waits_for_release_and_completes(sessions: Any) -> None:
    scheduler = FakeScheduler()
    runtime = _runtime(sessions, scheduler)
    batch_id, _ = await BatchStore(sessions).create_batch()
    async with MinerFleet(2, executors={AO: 1}, first_index=400) as fleet:
        msg = _request(batch_id, fleet, accept_in=1.5, release_in=30)
        started = asyncio.get_running_loop().time()
        out = await _handle(runtime, msg)
        elapsed = asyncio.get_running_loop().time() - started
        receipts = [r for m in fleet.miners for r in m.receipts_of_type("JobStartedReceipt")]
    assert out == [
        BatchShardCompleted(
            message_id=completed_message_id(msg.message_id, batch_id, 0),
            sent_at=out[0].sent_at,
            batch_id=batch_id,
            shard_index=0,
            job_count=2,
            ok=True,
        )
    ]
    (ready,) = scheduler.published
    assert isinstance(ready, BatchShardReady)
    assert ready.message_id == ready_message_id(msg.message_id, batch_id, 0)
    assert (ready.ready_executor_count, ready.ready_by_class) == (2, {AO: 2})
    assert elapsed < 10  # released by the scheduler, not by the 30 s fallback
    # Stagger against the shared deadline: always-on (1 s here) sent 1 s before accept_deadline.
    for r in receipts:
        assert r.payload.timestamp >= msg.deadlines.accept_deadline - timedelta(seconds=1.05)
    (batch_event,) = await _batch_event(sessions, batch_id, "SYNTHETIC_BATCH")
    assert batch_event.data["release"] == "released"
    assert batch_event.data["shard_message_id"] == str(msg.message_id)
    assert [j.status for j in await _jobs(sessions, batch_id)] == ["COMPLETED"] * 2

    # The same message again (the handler's commit was lost): not re-run, completion re-reported.
    connections = [m.connection_count for m in fleet.miners]
    again = await _handle(runtime, msg)
    assert [m.connection_count for m in fleet.miners] == connections
    assert again[0].message_id == out[0].message_id
    assert isinstance(again[0], BatchShardCompleted) and again[0].ok and again[0].job_count == 2


async def test_shard_releases_itself_at_the_deadline_without_a_scheduler(sessions: Any) -> None:
    runtime = _runtime(sessions, FakeScheduler(release=False))
    batch_id, _ = await BatchStore(sessions).create_batch()
    async with MinerFleet(1, executors={AO: 1}, first_index=410) as fleet:
        out = await _handle(runtime, _request(batch_id, fleet, accept_in=1.0, release_in=1.5))
    assert isinstance(out[0], BatchShardCompleted) and out[0].ok
    (batch_event,) = await _batch_event(sessions, batch_id, "SYNTHETIC_BATCH")
    assert batch_event.data["release"] == "deadline"
    assert [j.status for j in await _jobs(sessions, batch_id)] == ["COMPLETED"]


@pytest.mark.parametrize(
    ("contacted", "release_in", "reason"),
    [(True, 30.0, "redelivered"), (False, -5.0, "after its release deadline")],
)
async def test_redelivered_or_late_shard_is_not_run(
    sessions: Any, contacted: bool, release_in: float, reason: str
) -> None:
    runtime = _runtime(sessions, FakeScheduler())
    batch_id, _ = await BatchStore(sessions).create_batch()
    async with MinerFleet(1, executors={AO: 1}, first_index=420) as fleet:
        msg = _request(batch_id, fleet, accept_in=1.0, release_in=release_in)
        if contacted:  # the lease decision, not the delivery count, says "an earlier run may have sent"
            async with sessions() as session, session.begin():
                session.add(BatchShard(batch_id=batch_id, shard_index=0, miner_hotkeys=[]))
            await _earlier_delivery_contacted_the_miners(sessions, batch_id)
        out = await _handle(runtime, msg, delivery_count=2 if contacted else 1)
        assert fleet.miners[0].connection_count == 0  # the miners were never contacted
    (completed,) = out
    assert isinstance(completed, BatchShardCompleted)
    assert (completed.ok, completed.job_count) == (False, 0)
    assert reason in (completed.error or "")
    (failure,) = await _batch_event(sessions, batch_id, "GENERIC_ERROR")
    assert failure.type == "VALIDATOR_FAILURE"
    assert failure.data["miner_hotkeys"] == [fleet.miners[0].hotkey]
    assert await _jobs(sessions, batch_id) == []  # nothing stored against the miner


async def test_release_registry_keeps_early_releases() -> None:
    registry = ReleaseRegistry()
    at = datetime.now(UTC)
    registry.release(7, at)  # before anyone waits
    assert await registry.wait(7, 0.0) == at
    assert await registry.wait(8, 0.01) is None
    waiter: Callable[[], Any] = lambda: registry.wait(9, 5.0)  # noqa: E731
    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0)
    registry.release(9, at)
    assert await asyncio.wait_for(task, 1) == at
