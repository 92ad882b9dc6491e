"""The job-runner's lease on a shard (`batch_shards`): who runs it, and whether a redelivery may run it.

The shard handler runs for minutes without a database connection (a `long_running` bus handler), so
"this shard is being run" cannot be a transaction held open; it is a lease on the shard's row instead
(docs/scheduling.md §9): `claim_shard` decides and takes it in one short committed transaction
(`SELECT ... FOR UPDATE`), `ShardLease.held()` renews it every `LEASE_TTL_S / 3` while the shard runs
and releases it at the end.

What a delivery of `batch.shard.requested` does is the pure `decide` (a table test covers it):
- ALREADY_DONE: the shard's completion marker exists (or the scheduler closed the row): report the
  completion again (same message id: the scheduler deduplicates it);
- HELD_ELSEWHERE: a live lease: another delivery may be running the shard. Its owner may also have
  just died (SIGKILL: RabbitMQ redelivers at once, long before the lease lapses), so the delivery
  waits (`wait_for_lease`, bounded by one TTL plus a margin) for the lease to move: renewed (or taken
  by another runner) means a live owner runs and reports it, so ack without running and without a
  completion message; lapsed means the owner died, so decide again (FAIL_CONTACTED, or RUN when no
  initial request was sent yet);
- FAIL_CONTACTED: no live lease, but `initial_sent_at` is set: an earlier run may have sent the miners
  their initial job requests (and reserved their executors), so the shard is never sent again; it is
  reported failed with a VALIDATOR_FAILURE event naming the miners;
- TOO_LATE: nobody ran it, but it arrived after its release deadline: reported failed, not run;
- RUN: nobody ran it yet: claim the lease and run it.

`initial_sent_at` is set by `ShardLease.mark_initial_sent`, which the shard awaits just before its
first initial job request (`BatchDeps.on_initial_send`): a shard whose runner died before reaching
any miner is run again on redelivery; one that reached them is never re-sent. (`claim_shard(...,
mark_initial_sent=True)` sets it at claim time instead: the conservative rule.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db.models.shards import BatchShard
from horde_job_runner.synthetic.persistence import shard_marker_exists

log = structlog.get_logger(__name__)

# How long a lease lives without a heartbeat. Long enough that a renewal can miss twice (a DB blip of
# up to ~20 s, or a loop stalled by job generation) before the lease lapses under a running shard;
# short enough that a shard whose runner died is decidable (failed, never re-sent) within half a
# minute, well inside a batch's release window.
LEASE_TTL_S = 30.0
# Three renewals per TTL: one failed renewal is logged and the next still lands before expiry.
HEARTBEAT_FRACTION = 3
# Bound of every lease statement (claim, renewal, release): far above a healthy round trip
# (milliseconds), below the heartbeat period so a hung renewal cannot delay the next one.
LEASE_DB_TIMEOUT_S = 5.0
# Slack of `wait_for_lease` beyond one TTL and one re-read period: the re-read that sees the lapse and
# its own round trip on a loaded database (milliseconds when healthy; a second covers a slow machine).
LEASE_WAIT_SLACK_S = 1.0
# The row states in which the scheduler has closed the shard (docs/scheduling.md).
DONE_STATES = frozenset({"completed", "failed"})


class LeaseDecision(StrEnum):
    """What a delivery of `batch.shard.requested` does (see the module docstring)."""

    RUN = "run"
    ALREADY_DONE = "already_done"
    HELD_ELSEWHERE = "held_elsewhere"
    FAIL_CONTACTED = "fail_contacted"
    TOO_LATE = "too_late"


@dataclass(frozen=True)
class ShardRow:
    """The lease columns of a `batch_shards` row that the decision reads."""

    state: str
    owner: str | None
    expires_at: datetime | None
    initial_sent_at: datetime | None


def decide(row: ShardRow | None, *, now: datetime, marker: bool, late: bool) -> LeaseDecision:
    """Whether this delivery runs the shard. `row=None`: no row yet (it is created by the claim).

    A live lease counts whoever holds it, this instance included: a second delivery must not run a
    shard that one of ours is running.
    """
    if marker or (row is not None and row.state in DONE_STATES):
        return LeaseDecision.ALREADY_DONE
    if row is None:
        return LeaseDecision.TOO_LATE if late else LeaseDecision.RUN
    if row.owner is not None and row.expires_at is not None and row.expires_at > now:
        return LeaseDecision.HELD_ELSEWHERE
    if row.initial_sent_at is not None:
        return LeaseDecision.FAIL_CONTACTED
    return LeaseDecision.TOO_LATE if late else LeaseDecision.RUN


def new_owner_id() -> str:
    """A lease owner unique to one runtime instance: host and pid for people, a uuid for uniqueness."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"  # fits String(128)


class LeaseLost(RuntimeError):
    """The shard lease is no longer ours (it lapsed and another runner took the shard)."""


@dataclass
class ShardLease:
    """A claimed lease: renewed by `held()`'s heartbeat, released when the shard ends."""

    sessions: async_sessionmaker[AsyncSession]
    batch_id: int
    shard_index: int
    owner: str
    expires_at: datetime
    ttl_s: float = LEASE_TTL_S
    # Set after each successful renewal (tests and the debug view wait on / read it).
    renewed: asyncio.Event = field(default_factory=asyncio.Event)
    renewals: int = 0

    def _mine(self) -> Any:
        return (
            (BatchShard.batch_id == self.batch_id)
            & (BatchShard.shard_index == self.shard_index)
            & (BatchShard.lease_owner == self.owner)
        )

    async def _update(self, **values: Any) -> datetime | None:
        """Update the row if the lease is still ours; its new expiry, None if someone else holds it."""
        async with asyncio.timeout(LEASE_DB_TIMEOUT_S), self.sessions() as session, session.begin():
            expires: datetime | None = await session.scalar(
                update(BatchShard).where(self._mine()).values(**values).returning(BatchShard.lease_expires_at)
            )
        return expires

    async def renew(self) -> bool:
        """Push the expiry one TTL past the database's now; False if the lease is no longer ours."""
        expires = await self._update(
            lease_expires_at=func.now() + timedelta(seconds=self.ttl_s), lease_heartbeat_at=func.now()
        )
        if expires is None:
            return False
        self.expires_at = expires
        self.renewals += 1
        self.renewed.set()
        return True

    async def mark_initial_sent(self) -> None:
        """Record that the miners are about to get their initial job requests (never re-sent).

        `BatchDeps.on_initial_send`: raises `LeaseLost` when the lease is no longer ours, so a runner
        that lost its shard to a redelivery sends nothing to its miners.
        """
        if await self._update(initial_sent_at=func.coalesce(BatchShard.initial_sent_at, func.now())) is None:
            raise LeaseLost(
                f"shard {self.batch_id}/{self.shard_index}: lease lost before the initial requests"
            )

    async def release(self) -> None:
        """End the lease now (the owner stays on the row, for the record of who ran the shard)."""
        await self._update(lease_expires_at=func.now())

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / HEARTBEAT_FRACTION)
            try:
                if not await self.renew():
                    log.warning(
                        "batch.shard.lease_lost",
                        batch_id=self.batch_id,
                        shard=self.shard_index,
                        owner=self.owner,
                    )
            except Exception as exc:  # a DB blip: the next renewal still lands before the expiry
                log.warning(
                    "batch.shard.lease_renewal_failed",
                    batch_id=self.batch_id,
                    shard=self.shard_index,
                    error=f"{type(exc).__name__}: {exc}",
                )

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[ShardLease]:
        """Heartbeat while the body runs; release at the end (also when cancelled or failing)."""
        heartbeat = asyncio.create_task(self._heartbeat(), name=f"lease-{self.batch_id}-{self.shard_index}")
        try:
            yield self
        finally:
            heartbeat.cancel()
            await asyncio.wait({heartbeat})  # unlike `await heartbeat`, never mistakes its cancel for ours
            try:
                await self.release()
            except Exception as exc:  # the lease lapses by itself within one TTL
                log.warning(
                    "batch.shard.lease_release_failed",
                    batch_id=self.batch_id,
                    shard=self.shard_index,
                    error=f"{type(exc).__name__}: {exc}",
                )


@dataclass(frozen=True)
class Claim:
    """The outcome of `claim_shard`: the decision, and what reporting it needs."""

    decision: LeaseDecision
    # The SYNTHETIC_BATCH marker's data when the shard was persisted (ALREADY_DONE).
    marker: dict[str, Any] | None = None
    state: str | None = None
    attempts: int = 0
    lease: ShardLease | None = None  # set when decision is RUN
    # The lease columns as the decision saw them (HELD_ELSEWHERE: what `wait_for_lease` compares to).
    seen: ShardRow | None = None


async def claim_shard(
    sessions: async_sessionmaker[AsyncSession],
    *,
    batch_id: int,
    shard_index: int,
    shard_message_id: uuid.UUID,
    miner_hotkeys: Sequence[str],
    owner: str,
    late: bool,
    ttl_s: float = LEASE_TTL_S,
    mark_initial_sent: bool = True,
) -> Claim:
    """Decide what this delivery does and, on RUN, take the lease, in one short committed transaction.

    The row is created (state `requested`) if the scheduler did not create it (a debug batch, tests).
    The row lock makes two concurrent deliveries decide one after the other: one RUNs, the other sees
    its live lease.
    """
    async with asyncio.timeout(LEASE_DB_TIMEOUT_S), sessions() as session, session.begin():
        await session.execute(
            pg_insert(BatchShard)
            .values(
                batch_id=batch_id,
                shard_index=shard_index,
                miner_hotkeys=list(miner_hotkeys),
                state="requested",
                error="",
                attempts=0,
            )
            .on_conflict_do_nothing(constraint="uq_batch_shards_batch_shard")
        )
        row = await session.scalar(
            select(BatchShard)
            .where(BatchShard.batch_id == batch_id, BatchShard.shard_index == shard_index)
            .with_for_update()
        )
        assert row is not None  # inserted above or already there; rows are not deleted under a lock
        now = await session.scalar(select(func.now()))  # the database's clock, shared by replicas
        assert now is not None
        marker = await shard_marker_exists(session, shard_message_id)
        seen = _lease_columns(row)
        decision = decide(
            seen,
            now=now,
            marker=marker is not None,
            late=late,
        )
        lease = None
        if decision is LeaseDecision.RUN:
            row.lease_owner = owner
            row.lease_expires_at = now + timedelta(seconds=ttl_s)
            row.lease_heartbeat_at = now
            row.attempts = (row.attempts or 0) + 1
            if mark_initial_sent:
                row.initial_sent_at = now
            lease = ShardLease(sessions, batch_id, shard_index, owner, row.lease_expires_at, ttl_s)
        return Claim(decision, marker, row.state, row.attempts or 0, lease, seen)


def _lease_columns(row: BatchShard) -> ShardRow:
    return ShardRow(row.state, row.lease_owner, row.lease_expires_at, row.initial_sent_at)


class LeaseWatch(StrEnum):
    """What became of a live lease held elsewhere (`lease_verdict`, `wait_for_lease`)."""

    RENEWED = "renewed"  # its owner renewed it, or another runner took it over: a live owner reports
    LAPSED = "lapsed"  # expired (its owner died or released it) or the shard was closed: decide again
    WAITING = "waiting"  # neither yet
    TIMED_OUT = "timed_out"  # neither within the bound (an owner with a longer TTL than ours)


def lease_verdict(seen: ShardRow, current: ShardRow | None, *, now: datetime) -> LeaseWatch:
    """Compare a re-read of the row with the live lease first seen (pure; a table test covers it).

    A released lease (the owner finished: its expiry set to its now) and a closed row count as lapsed:
    deciding again then finds the completion marker or the closed state and reports it.
    """
    if current is None or current.state in DONE_STATES:
        return LeaseWatch.LAPSED
    if current.owner != seen.owner:
        # Taken over after a lapse by a runner that runs it (RUN is the only decision that claims).
        return LeaseWatch.RENEWED if current.owner is not None else LeaseWatch.LAPSED
    if current.expires_at is None or current.expires_at <= now:
        return LeaseWatch.LAPSED
    if seen.expires_at is None or current.expires_at > seen.expires_at:
        return LeaseWatch.RENEWED
    return LeaseWatch.WAITING


async def read_lease(
    sessions: async_sessionmaker[AsyncSession], *, batch_id: int, shard_index: int
) -> tuple[ShardRow | None, datetime]:
    """The shard's lease columns and the database's now, in one short read (no lock)."""
    async with asyncio.timeout(LEASE_DB_TIMEOUT_S), sessions() as session:
        row = await session.scalar(
            select(BatchShard).where(BatchShard.batch_id == batch_id, BatchShard.shard_index == shard_index)
        )
        now = await session.scalar(select(func.now()))
    assert now is not None
    return (_lease_columns(row) if row is not None else None), now


def lease_wait_bound(ttl_s: float) -> float:
    """How long `wait_for_lease` waits at most: a lease seen live lapses within one TTL unless renewed
    (it was at most just renewed, by an owner on the same TTL), the lapse is seen at the next re-read
    (one period later) and that read takes a round trip (`LEASE_WAIT_SLACK_S`)."""
    return ttl_s + ttl_s / HEARTBEAT_FRACTION + LEASE_WAIT_SLACK_S


async def wait_for_lease(
    sessions: async_sessionmaker[AsyncSession],
    *,
    batch_id: int,
    shard_index: int,
    seen: ShardRow,
    ttl_s: float = LEASE_TTL_S,
) -> LeaseWatch:
    """Re-read the row every `ttl_s / 3` (the owner's renewal period) until the live lease `seen` is
    renewed or lapses, at most `lease_wait_bound(ttl_s)`; RENEWED, LAPSED or TIMED_OUT.

    A failed re-read is logged and retried at the next period: this only delays the verdict.
    """
    period = ttl_s / HEARTBEAT_FRACTION
    loop = asyncio.get_running_loop()
    give_up = loop.time() + lease_wait_bound(ttl_s)
    while True:
        remaining = give_up - loop.time()
        if remaining <= 0:
            return LeaseWatch.TIMED_OUT
        await asyncio.sleep(min(period, remaining))  # the polling period, not a synchronisation
        try:
            current, now = await read_lease(sessions, batch_id=batch_id, shard_index=shard_index)
        except Exception as exc:  # a DB blip: the next period retries within the bound
            log.warning(
                "batch.shard.lease_read_failed",
                batch_id=batch_id,
                shard=shard_index,
                error=f"{type(exc).__name__}: {exc}",
            )
            continue
        verdict = lease_verdict(seen, current, now=now)
        if verdict is not LeaseWatch.WAITING:
            return verdict


__all__ = [
    "DONE_STATES",
    "LEASE_TTL_S",
    "Claim",
    "LeaseDecision",
    "LeaseLost",
    "LeaseWatch",
    "ShardLease",
    "ShardRow",
    "claim_shard",
    "decide",
    "lease_verdict",
    "lease_wait_bound",
    "new_owner_id",
    "read_lease",
    "wait_for_lease",
]
