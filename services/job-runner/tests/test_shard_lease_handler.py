"""The shard handler on the lease: redeliveries after a runner died, was killed, or is still alive.

`run_shard` is replaced by a recorder (these tests are about who may run a shard, not about a shard),
so no miner is involved: "run" means the recorder was called."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_job_runner.synthetic import handler
from horde_job_runner.synthetic.batch import completed_message_id
from horde_job_runner.synthetic.persistence import BatchStore
from horde_job_runner.synthetic.shard_lease import (
    lease_wait_bound,
)
from testing.shard_lease import (
    WAIT_S,
    RecordedShards,
    claim_for,
    db_now,
    dead_runner_left,
    deliver_shard,
    failure_events,
    killed_runner_left,
    make_runtime,
    shard_request,
    shard_row,
)

pytestmark = pytest.mark.timeout(60)


async def test_redelivery_whose_lease_lapsed_before_any_send_runs(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    runtime = make_runtime(sessions)
    batch_id, _ = await BatchStore(sessions).create_batch()
    await dead_runner_left(sessions, batch_id, initial_sent=False)
    msg = shard_request(batch_id)
    (completed,) = await deliver_shard(runtime, msg, delivery_count=2)
    assert len(shards.runs) == 1
    assert completed.ok and completed.message_id == completed_message_id(msg.message_id, batch_id, 0)
    row = await shard_row(sessions, batch_id)
    assert (row.lease_owner, row.attempts) == (runtime.lease_owner, 2)
    assert row.lease_expires_at is not None and row.lease_expires_at <= await db_now(sessions)  # released
    assert await failure_events(sessions, batch_id) == []


async def test_redelivery_after_the_miners_may_have_been_contacted_fails_without_running(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    runtime = make_runtime(sessions)
    batch_id, _ = await BatchStore(sessions).create_batch()
    await dead_runner_left(sessions, batch_id, initial_sent=True)
    (completed,) = await deliver_shard(runtime, shard_request(batch_id), delivery_count=2)
    assert shards.runs == []
    assert (completed.ok, completed.job_count) == (False, 0)
    assert "redelivered" in (completed.error or "")
    (failure,) = await failure_events(sessions, batch_id)
    assert failure.type == "VALIDATOR_FAILURE" and failure.data["miner_hotkeys"] == ["5Fminer"]
    assert (await shard_row(sessions, batch_id)).attempts == 1  # not claimed


async def test_redelivery_under_a_killed_runners_lease_fails_once_it_lapses(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    runtime = make_runtime(sessions, lease_ttl_s=0.6)
    batch_id, _ = await BatchStore(sessions).create_batch()
    await killed_runner_left(sessions, batch_id, live_for_s=0.5, initial_sent=True)
    msg = shard_request(batch_id)
    loop = asyncio.get_running_loop()
    started = loop.time()
    (completed,) = await asyncio.wait_for(deliver_shard(runtime, msg, delivery_count=2), WAIT_S)
    assert loop.time() - started <= lease_wait_bound(0.6) + 1.0  # not the shard deadline's minutes
    assert shards.runs == []
    assert (completed.ok, completed.job_count) == (False, 0)
    assert completed.message_id == completed_message_id(msg.message_id, batch_id, 0)
    assert "redelivered" in (completed.error or "")
    (failure,) = await failure_events(sessions, batch_id)
    assert failure.type == "VALIDATOR_FAILURE" and failure.data["miner_hotkeys"] == ["5Fminer"]
    row = await shard_row(sessions, batch_id)
    assert (row.lease_owner, row.attempts) == ("killed-runner", 1)  # never claimed, never re-sent


async def test_redelivery_under_a_killed_runners_lease_runs_if_nothing_was_sent(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    runtime = make_runtime(sessions, lease_ttl_s=0.6)
    batch_id, _ = await BatchStore(sessions).create_batch()
    await killed_runner_left(sessions, batch_id, live_for_s=0.5, initial_sent=False)
    (completed,) = await asyncio.wait_for(
        deliver_shard(runtime, shard_request(batch_id), delivery_count=2), WAIT_S
    )
    assert len(shards.runs) == 1 and completed.ok
    row = await shard_row(sessions, batch_id)
    assert (row.lease_owner, row.attempts) == (runtime.lease_owner, 2)
    assert await failure_events(sessions, batch_id) == []


async def test_redelivery_under_a_live_owners_lease_acks_silently(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    runtime = make_runtime(sessions, lease_ttl_s=0.6)
    batch_id, _ = await BatchStore(sessions).create_batch()
    owner = await claim_for(sessions, batch_id, "live-runner", ttl_s=0.6)
    assert owner.lease is not None
    async with owner.lease.held():
        out = await asyncio.wait_for(
            deliver_shard(runtime, shard_request(batch_id), delivery_count=2), WAIT_S
        )
        assert owner.lease.renewals >= 1  # the verdict came from a renewal, not a lapse
    assert out == [] and shards.runs == []
    assert await failure_events(sessions, batch_id) == []
    assert (await shard_row(sessions, batch_id)).lease_owner == "live-runner"


async def test_a_lease_that_neither_moves_nor_lapses_is_left_to_the_scheduler(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An owner on a longer TTL than ours: the wait gives up at its bound and acks (old behaviour)."""
    shards = RecordedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    runtime = make_runtime(sessions, lease_ttl_s=0.3)
    batch_id, _ = await BatchStore(sessions).create_batch()
    await killed_runner_left(sessions, batch_id, live_for_s=300, initial_sent=True)
    out = await asyncio.wait_for(deliver_shard(runtime, shard_request(batch_id), delivery_count=2), WAIT_S)
    assert out == [] and shards.runs == []
    assert await failure_events(sessions, batch_id) == []
