"""The shard lease against Postgres: claim, heartbeat, release, losing the lease."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db.models.shards import BatchShard
from horde_job_runner.synthetic.persistence import BatchStore
from horde_job_runner.synthetic.shard_lease import (
    LeaseDecision,
    LeaseLost,
)
from testing.shard_lease import WAIT_S, claim_for, db_now, lapse_lease, shard_row

pytestmark = pytest.mark.timeout(60)


async def test_claim_creates_the_row_and_takes_the_lease(sessions: async_sessionmaker[AsyncSession]) -> None:
    batch_id, _ = await BatchStore(sessions).create_batch()
    before = await db_now(sessions)
    claim = await claim_for(sessions, batch_id, "runner-a")
    assert claim.decision is LeaseDecision.RUN and claim.lease is not None and claim.attempts == 1
    row = await shard_row(sessions, batch_id)
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
    other = await claim_for(sessions, batch_id, "runner-b")
    assert other.decision is LeaseDecision.HELD_ELSEWHERE and other.lease is None
    assert (await shard_row(sessions, batch_id)).attempts == 1


async def test_the_scheduler_row_is_claimed_not_replaced(sessions: async_sessionmaker[AsyncSession]) -> None:
    batch_id, _ = await BatchStore(sessions).create_batch()
    async with sessions() as session, session.begin():
        session.add(
            BatchShard(batch_id=batch_id, shard_index=0, miner_hotkeys=["5Fscheduled"], state="ready")
        )
    claim = await claim_for(sessions, batch_id, "runner-a")
    assert claim.decision is LeaseDecision.RUN
    row = await shard_row(sessions, batch_id)
    assert (row.state, row.miner_hotkeys, row.lease_owner) == ("ready", ["5Fscheduled"], "runner-a")


async def test_heartbeat_renews_and_release_ends_the_lease(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    batch_id, _ = await BatchStore(sessions).create_batch()
    claim = await claim_for(sessions, batch_id, "runner-a", ttl_s=0.6)  # a renewal every 0.2 s
    lease = claim.lease
    assert lease is not None
    first_expiry = lease.expires_at
    async with lease.held():
        await asyncio.wait_for(lease.renewed.wait(), WAIT_S)
        renewed = await shard_row(sessions, batch_id)
        assert renewed.lease_expires_at is not None and renewed.lease_expires_at > first_expiry
        assert renewed.lease_heartbeat_at is not None
        assert renewed.lease_heartbeat_at > first_expiry - timedelta(seconds=0.6)  # after the claim
    released = await shard_row(sessions, batch_id)
    assert released.lease_owner == "runner-a"  # kept for the record
    assert released.lease_expires_at is not None and released.lease_expires_at <= await db_now(sessions)
    # A redelivery now: the lease is gone but the miners may have had their requests.
    assert (await claim_for(sessions, batch_id, "runner-b")).decision is LeaseDecision.FAIL_CONTACTED


async def test_a_failed_renewal_is_logged_not_fatal(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id, _ = await BatchStore(sessions).create_batch()
    claim = await claim_for(sessions, batch_id, "runner-a", ttl_s=0.3)
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
    first = await claim_for(sessions, batch_id, "runner-a", mark_initial_sent=False)
    assert first.lease is not None
    await lapse_lease(sessions, batch_id)
    second = await claim_for(sessions, batch_id, "runner-b")  # expired, never sent: runs again
    assert second.decision is LeaseDecision.RUN and second.attempts == 2
    assert not await first.lease.renew()
    await first.lease.release()  # not ours any more: leaves runner-b's lease alone
    row = await shard_row(sessions, batch_id)
    assert row.lease_owner == "runner-b" and row.lease_expires_at is not None
    assert row.lease_expires_at > await db_now(sessions)


async def test_mark_initial_sent_keeps_the_first_time(sessions: async_sessionmaker[AsyncSession]) -> None:
    batch_id, _ = await BatchStore(sessions).create_batch()
    claim = await claim_for(sessions, batch_id, "runner-a", mark_initial_sent=False)
    assert claim.lease is not None
    assert (await shard_row(sessions, batch_id)).initial_sent_at is None
    await claim.lease.mark_initial_sent()
    first = (await shard_row(sessions, batch_id)).initial_sent_at
    assert first is not None
    await claim.lease.mark_initial_sent()
    assert (await shard_row(sessions, batch_id)).initial_sent_at == first


async def test_a_runner_that_lost_its_lease_contacts_no_miner(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """`mark_initial_sent` is the shard's `on_initial_send`: once another runner took the shard, it
    raises, so the old runner never sends initial requests (and the row keeps no send time of it)."""
    batch_id, _ = await BatchStore(sessions).create_batch()
    first = await claim_for(sessions, batch_id, "runner-a", mark_initial_sent=False)
    assert first.lease is not None
    await lapse_lease(sessions, batch_id)
    second = await claim_for(sessions, batch_id, "runner-b", mark_initial_sent=False)
    assert second.decision is LeaseDecision.RUN
    with pytest.raises(LeaseLost):
        await first.lease.mark_initial_sent()
    assert (await shard_row(sessions, batch_id)).initial_sent_at is None
