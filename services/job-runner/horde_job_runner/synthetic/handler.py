"""Bus side of synthetic batches: `batch.shard.requested` runs a shard, `batch.released` wakes it.

Wiring (in `app.py`): the handlers' state is a `JobRunnerRuntime` per service instance, a typed
dependency of the spec (`Dependency(JobRunnerRuntime, job_runner_runtime)`, after the instance's
`GenerationPool`); never a module global, so two instances in one process share nothing. Handlers
read it as `ctx.dependency(JobRunnerRuntime)`.

Transactions. The shard handler is a `long_running` bus handler (`app.py`): the consumer holds no
transaction while it runs, so a running shard holds no database connection. The delivery's own final
transaction (opened by the consumer once the handler returns) holds only the idempotency row, the
returned `batch.shard.completed` and the writes deferred with `ctx.defer_write` (a failure event);
the shard's rows are written by `run_shard` through its own transaction, minutes later. The two are
tied by a marker: the shard's SYNTHETIC_BATCH telemetry event carries the request's `message_id`.

Lease (docs/scheduling.md §9). Before running, the handler claims the shard's `batch_shards` row in
one short committed transaction (`shard_lease.claim_shard`); a heartbeat renews it while the shard
runs, and the shard sets `initial_sent_at` just before its first initial job request. A delivery does
what the lease decision (`shard_lease.decide`) says:
- the marker exists (or the scheduler closed the row): reported completed again (same message id);
- a live lease: its owner runs it, or was just killed (RabbitMQ redelivers at once): wait for the
  lease to move (`shard_lease.wait_for_lease`); renewed, nothing is done; lapsed, decide again;
- no live lease but `initial_sent_at` set: the miners may already hold reserved executors, so it is
  never re-run: a VALIDATOR_FAILURE event names the miners and it is reported failed, with no job
  rows, so no miner is blamed;
- otherwise (nobody reached its miners yet) the lease is taken and the shard runs.
A request that arrives after its release deadline (plus a grace) that nobody ran is failed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.messages import (
    BatchReleased,
    BatchShardCompleted,
    BatchShardReady,
    BatchShardRequested,
    BusMessage,
)
from horde_common.bus.router import HandlerContext
from horde_common.config import HashcatDifficulty, Settings
from horde_common.telemetry import SystemEventSubtype, SystemEventType, record_event
from horde_job_runner.synthetic.batch import completed_message_id, run_shard
from horde_job_runner.synthetic.generation import JobFactory, PoolJobFactory
from horde_job_runner.synthetic.generation_pool import GenerationPool
from horde_job_runner.synthetic.model import BatchDeps, BatchTimeouts, ShardRequest
from horde_job_runner.synthetic.persistence import BatchStore
from horde_job_runner.synthetic.shard_lease import (
    LEASE_TTL_S,
    Claim,
    LeaseDecision,
    LeaseWatch,
    claim_shard,
    new_owner_id,
    wait_for_lease,
)

if TYPE_CHECKING:
    from horde_common.service.context import ServiceContext

Keypair = Any  # a bittensor sr25519 keypair (`horde_common.wallet.load_hotkey`)

__all__ = [
    "JobRunnerRuntime",
    "ReleaseRegistry",
    "ShardNotPersisted",
    "active_shards_view",
    "handle_batch_released",
    "handle_batch_shard_requested",
    "job_runner_runtime",
    "job_runner_runtime_with",
    "start_generation",
    "stop_generation",
]

log = structlog.get_logger(__name__)


class ShardNotPersisted(RuntimeError):
    """Every attempt to store the shard failed: let the bus redeliver (which reports the failure)."""


class ReleaseRegistry:
    """`batch.released` per batch id, for the shards of this process to wait on.

    A release that arrives before its shard starts waiting is kept (the fanout queue is per
    process; the scheduler may release a batch whose other shards were quicker).
    """

    def __init__(self, keep: int = 64) -> None:
        self._events: dict[int, asyncio.Event] = {}
        self._released_at: dict[int, datetime] = {}
        self._keep = keep

    def _event(self, batch_id: int) -> asyncio.Event:
        event = self._events.get(batch_id)
        if event is None:
            event = self._events[batch_id] = asyncio.Event()
            while len(self._events) > self._keep:
                oldest = min(self._events)
                self._events.pop(oldest, None)
                self._released_at.pop(oldest, None)
        return event

    def release(self, batch_id: int, released_at: datetime) -> None:
        self._released_at.setdefault(batch_id, released_at)
        self._event(batch_id).set()

    def is_released(self, batch_id: int) -> bool:
        return batch_id in self._released_at

    async def wait(self, batch_id: int, timeout_s: float) -> datetime | None:
        event = self._event(batch_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, timeout_s))
        return self._released_at.get(batch_id)


@dataclass
class JobRunnerRuntime:
    """The synthetic handlers' dependencies and state, one per service instance (`job_runner_runtime`)."""

    sessions: async_sessionmaker[AsyncSession]
    keypair: Keypair
    settings: Settings
    publish: Callable[[BusMessage], Awaitable[None]] | None = None
    releases: ReleaseRegistry = field(default_factory=ReleaseRegistry)
    pool: GenerationPool = field(default_factory=GenerationPool)  # the service's: `open_generation_pool`
    job_factory: JobFactory | None = None  # None: a `PoolJobFactory` on `pool` (tests: in-process)
    timeouts: BatchTimeouts = field(default_factory=BatchTimeouts)
    active: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    # This instance's name on the shard leases it takes (unique per instance, readable per host/pid).
    lease_owner: str = field(default_factory=new_owner_id)
    # The TTL of the leases it takes, and the period of its waits on another's lease (tests shorten
    # it: `job_runner_runtime_with(lease_ttl_s=...)`; no setting, every replica must agree on it).
    lease_ttl_s: float = LEASE_TTL_S

    def deps(self, on_initial_send: Callable[[], Awaitable[None]] | None = None) -> BatchDeps:
        publish = self.publish

        async def publish_ready(msg: BatchShardReady) -> None:
            if publish is not None:
                await publish(msg)

        return BatchDeps(
            keypair=self.keypair,
            store=BatchStore(self.sessions),
            difficulty=HashcatDifficulty(self.settings.SYNTHETIC_HASHCAT_DIFFICULTY),
            timeouts=self.timeouts,
            job_factory=self.job_factory if self.job_factory is not None else PoolJobFactory(self.pool),
            release_waiter=self.releases,
            publish_ready=publish_ready if publish is not None else None,
            on_initial_send=on_initial_send,
        )


RuntimeFactory = Callable[["ServiceContext"], contextlib.AbstractAsyncContextManager[JobRunnerRuntime]]


def job_runner_runtime_with(*, lease_ttl_s: float = LEASE_TTL_S) -> RuntimeFactory:
    """A `ServiceSpec` dependency factory with explicit runtime parameters (not from the environment:
    a test or a bench builds its spec with a short lease TTL; the service uses `job_runner_runtime`)."""
    if lease_ttl_s <= 0:
        raise ValueError(f"lease_ttl_s must be > 0, got {lease_ttl_s}")

    @contextlib.asynccontextmanager
    async def factory(ctx: ServiceContext) -> AsyncIterator[JobRunnerRuntime]:
        if ctx.hotkey is not None:
            keypair = ctx.hotkey  # preflight loaded it (the spec needs a hotkey)
        else:
            from horde_common.wallet import load_hotkey

            keypair = load_hotkey(ctx.settings)
        broker = ctx.broker
        yield JobRunnerRuntime(
            sessions=ctx.sessions,
            keypair=keypair,
            settings=ctx.settings,
            publish=broker.publish if broker is not None else None,
            pool=ctx.dependency(GenerationPool),  # the instance's own (`open_generation_pool`)
            lease_ttl_s=lease_ttl_s,
        )

    return factory


def job_runner_runtime(ctx: ServiceContext) -> contextlib.AbstractAsyncContextManager[JobRunnerRuntime]:
    """The `ServiceSpec` dependency: this instance's runtime, from its sessions, broker and key."""
    return job_runner_runtime_with()(ctx)


async def start_generation(ctx: ServiceContext) -> None:
    """`ServiceSpec.on_start`: start this instance's job generation workers (its `GenerationPool`)."""
    await ctx.dependency(GenerationPool).start()


async def stop_generation(ctx: ServiceContext) -> None:
    """`ServiceSpec.on_stop`: stop this instance's job generation workers and wait for them."""
    await asyncio.to_thread(ctx.dependency(GenerationPool).shutdown)


# ------------------------------------------------------------------------------------------ handlers


async def handle_batch_released(msg: BatchReleased, ctx: HandlerContext) -> None:
    """`job-runner.batch.released` (broadcast): wake this instance's shards of that batch."""
    ctx.dependency(JobRunnerRuntime).releases.release(msg.batch_id, msg.released_at)


async def handle_batch_shard_requested(
    msg: BatchShardRequested, ctx: HandlerContext
) -> list[BatchShardCompleted]:
    """`job-runner.batch.shard.requested`: run the shard (minutes), return `batch.shard.completed`.

    Registered `long_running` (no transaction held while it runs); `ctx.sessions=None` (a context
    built without a database, tests of the wiring) runs the shard without a lease.
    """
    if ctx.db_session is not None:
        raise RuntimeError("the shard handler must be registered long_running=True (see app.py)")
    runtime = ctx.dependency(JobRunnerRuntime)
    late_reason = f"arrived after its release deadline ({msg.deadlines.release_deadline.isoformat()})"
    sessions = ctx.sessions
    if sessions is None:
        return [_failed(msg, late_reason)] if _is_late(msg, runtime) else await _run(msg, runtime)

    claim = await _claim(msg, sessions, runtime, ctx.delivery_count)
    if claim.decision is LeaseDecision.HELD_ELSEWHERE:
        # Its owner runs it and reports it, unless it was just killed: wait for the lease to move.
        assert claim.seen is not None
        watch = await wait_for_lease(
            sessions,
            batch_id=msg.batch_id,
            shard_index=msg.shard_index,
            seen=claim.seen,
            ttl_s=runtime.lease_ttl_s,
        )
        log.info("batch.shard.lease_watch", batch_id=msg.batch_id, shard=msg.shard_index, watch=str(watch))
        if watch is LeaseWatch.LAPSED:
            claim = await _claim(msg, sessions, runtime, ctx.delivery_count)
    if claim.decision is LeaseDecision.RUN:
        assert claim.lease is not None
        async with claim.lease.held():
            return await _run(msg, runtime, on_initial_send=claim.lease.mark_initial_sent)
    if claim.decision is LeaseDecision.ALREADY_DONE:
        return [_completed_again(msg, claim)]
    if claim.decision is LeaseDecision.HELD_ELSEWHERE:
        # Renewed or taken over: a live owner runs and reports it (a second run would be wrong). Not
        # moved within the bound (an owner on a longer TTL): the scheduler's shard deadline closes it.
        return []
    reason = (
        late_reason
        if claim.decision is LeaseDecision.TOO_LATE
        else "redelivered: an earlier delivery may already have contacted the miners"
    )
    log.warning("batch.shard.not_run", batch_id=msg.batch_id, shard=msg.shard_index, reason=reason)

    async def failure_event(session: AsyncSession) -> None:
        await record_event(
            session,
            SystemEventType.VALIDATOR_FAILURE,
            SystemEventSubtype.GENERIC_ERROR,
            f"synthetic shard {msg.shard_index}/{msg.shard_count} of batch {msg.batch_id} not run: {reason}",
            {
                "batch_id": msg.batch_id,
                "shard_index": msg.shard_index,
                "shard_message_id": str(msg.message_id),
                "miner_hotkeys": [m.hotkey for m in msg.miners],
            },
        )

    ctx.defer_write(failure_event)  # commits with the idempotency row: once per message
    return [_failed(msg, reason)]


def _is_late(msg: BatchShardRequested, runtime: JobRunnerRuntime) -> bool:
    """Past its release deadline plus the grace (decided again after a wait on another's lease)."""
    late_s = (datetime.now(UTC) - msg.deadlines.release_deadline).total_seconds()
    return late_s > runtime.timeouts.late_request_grace


async def _claim(
    msg: BatchShardRequested,
    sessions: async_sessionmaker[AsyncSession],
    runtime: JobRunnerRuntime,
    delivery_count: int,
) -> Claim:
    """`claim_shard` for this delivery, logged."""
    claim = await claim_shard(
        sessions,
        batch_id=msg.batch_id,
        shard_index=msg.shard_index,
        shard_message_id=msg.message_id,
        miner_hotkeys=[m.hotkey for m in msg.miners],
        owner=runtime.lease_owner,
        late=_is_late(msg, runtime),
        ttl_s=runtime.lease_ttl_s,
        mark_initial_sent=False,  # set just before the first initial request (`on_initial_send`)
    )
    log.info(
        "batch.shard.claim",
        batch_id=msg.batch_id,
        shard=msg.shard_index,
        decision=str(claim.decision),
        attempts=claim.attempts,
        delivery=delivery_count,
    )
    return claim


async def _run(
    msg: BatchShardRequested,
    runtime: JobRunnerRuntime,
    on_initial_send: Callable[[], Awaitable[None]] | None = None,
) -> list[BatchShardCompleted]:
    """Run the shard and report it (raise `ShardNotPersisted` to get the failure reported on redelivery)."""
    key = (msg.batch_id, msg.shard_index)
    runtime.active[key] = {
        "batch_id": msg.batch_id,
        "shard_index": msg.shard_index,
        "miners": len(msg.miners),
    }
    try:
        result = await run_shard(ShardRequest.from_message(msg), runtime.deps(on_initial_send))
    finally:
        runtime.active.pop(key, None)
    if not result.persisted and msg.miners:
        raise ShardNotPersisted(result.error or "shard results could not be stored")
    return [
        BatchShardCompleted(
            message_id=_completed_id(msg),
            batch_id=msg.batch_id,
            shard_index=msg.shard_index,
            job_count=result.job_count,
            ok=result.ok,
            error=result.error,
        )
    ]


def _completed_id(msg: BatchShardRequested) -> uuid.UUID:
    return completed_message_id(msg.message_id, msg.batch_id, msg.shard_index)


def _failed(msg: BatchShardRequested, reason: str) -> BatchShardCompleted:
    return BatchShardCompleted(
        message_id=_completed_id(msg),
        batch_id=msg.batch_id,
        shard_index=msg.shard_index,
        job_count=0,
        ok=False,
        error=reason,
    )


def _completed_again(msg: BatchShardRequested, claim: Claim) -> BatchShardCompleted:
    """The completion of a shard already persisted (from its marker) or closed by the scheduler."""
    log.info("batch.shard.already_persisted", batch_id=msg.batch_id, shard=msg.shard_index)
    marker = claim.marker
    if marker is None:  # closed by the scheduler without our marker (e.g. failed at its deadline)
        ok = claim.state == "completed"
        return BatchShardCompleted(
            message_id=_completed_id(msg),
            batch_id=msg.batch_id,
            shard_index=msg.shard_index,
            job_count=0,
            ok=ok,
            error=None if ok else f"shard already {claim.state}",
        )
    job_count = sum(
        int(v.get("total", 0))
        for v in ((marker.get("counts") or {}).get("jobs") or {}).values()
        if isinstance(v, dict)
    )
    return BatchShardCompleted(
        message_id=_completed_id(msg),
        batch_id=msg.batch_id,
        shard_index=msg.shard_index,
        job_count=job_count,
        ok=bool(marker.get("ok", True)),
    )


async def active_shards_view(ctx: ServiceContext) -> dict[str, Any]:
    """A `/debug/` view: the shards this service instance is running now."""
    runtime = ctx.dependencies.find(JobRunnerRuntime)
    if runtime is None:
        return {"installed": False, "shards": []}
    return {"installed": True, "shards": list(runtime.active.values())}
