"""Bus side of synthetic batches: `batch.shard.requested` runs a shard, `batch.released` wakes it.

Wiring (in `app.py`): the handlers' state is a `JobRunnerRuntime` per service instance, a typed
dependency of the spec (never a module global: two instances in one process share nothing):

    SPEC = ServiceSpec(..., dependencies=[Dependency(JobRunnerRuntime, job_runner_runtime)],
                       on_start=start_generation, on_stop=stop_generation,
                       debug_views={"synthetic": active_shards_view})

and the handlers read it as `ctx.dependency(JobRunnerRuntime)`.

Transactions. The bus handler's own transaction (`ctx.session`) holds only the idempotency row and
the returned `batch.shard.completed`; the shard's rows are written by `run_shard` through its own
transaction, minutes later, on a fresh connection (a handler transaction held open for the whole
batch would lose everything to one dropped connection). The two are tied by a marker: the shard's
SYNTHETIC_BATCH telemetry event carries the request's `message_id`.

Redelivery. A `batch.shard.requested` delivered again (the runner crashed or its commit failed)
is never re-run against the miners, because the first delivery may already have reserved their
executors: if the marker exists the shard is reported completed again (same message id, so the
scheduler deduplicates it); otherwise a VALIDATOR_FAILURE event is written and the shard is
reported failed (`ok=False`). No job rows are written for it, so no miner is blamed.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from horde_job_runner.synthetic.generation import JobFactory, default_job_factory
from horde_job_runner.synthetic.model import BatchDeps, BatchTimeouts, ShardRequest
from horde_job_runner.synthetic.persistence import BatchStore, shard_marker_exists

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
    job_factory: JobFactory = field(default_factory=default_job_factory)
    timeouts: BatchTimeouts = field(default_factory=BatchTimeouts)
    active: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)

    def deps(self) -> BatchDeps:
        publish = self.publish

        async def publish_ready(msg: BatchShardReady) -> None:
            if publish is not None:
                await publish(msg)

        return BatchDeps(
            keypair=self.keypair,
            store=BatchStore(self.sessions),
            difficulty=HashcatDifficulty(self.settings.SYNTHETIC_HASHCAT_DIFFICULTY),
            timeouts=self.timeouts,
            job_factory=self.job_factory,
            release_waiter=self.releases,
            publish_ready=publish_ready if publish is not None else None,
        )


@contextlib.asynccontextmanager
async def job_runner_runtime(ctx: ServiceContext) -> AsyncIterator[JobRunnerRuntime]:
    """The `ServiceSpec` dependency: this instance's runtime, from its sessions, broker and key."""
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
    )


async def start_generation(ctx: ServiceContext) -> None:
    """`ServiceSpec.on_start`: start the job generation workers (process-wide, shared by instances)."""
    from horde_job_runner.synthetic.generation import warm_up

    await asyncio.to_thread(warm_up)


async def stop_generation(ctx: ServiceContext) -> None:
    """`ServiceSpec.on_stop`: stop the job generation workers."""
    from horde_job_runner.synthetic.generation import shutdown_pool

    await asyncio.to_thread(shutdown_pool)


# ------------------------------------------------------------------------------------------ handlers


async def handle_batch_released(msg: BatchReleased, ctx: HandlerContext) -> None:
    """`job-runner.batch.released` (broadcast): wake this instance's shards of that batch."""
    ctx.dependency(JobRunnerRuntime).releases.release(msg.batch_id, msg.released_at)


async def handle_batch_shard_requested(
    msg: BatchShardRequested, ctx: HandlerContext
) -> list[BatchShardCompleted]:
    """`job-runner.batch.shard.requested`: run the shard (minutes), return `batch.shard.completed`."""
    runtime = ctx.dependency(JobRunnerRuntime)
    completed_id = completed_message_id(msg.message_id, msg.batch_id, msg.shard_index)
    session = ctx.db_session

    if session is not None:
        marker = await shard_marker_exists(session, msg.message_id)
        if marker is not None:
            log.info("batch.shard.already_persisted", batch_id=msg.batch_id, shard=msg.shard_index)
            job_count = sum(
                int(v.get("total", 0))
                for v in ((marker.get("counts") or {}).get("jobs") or {}).values()
                if isinstance(v, dict)
            )
            return [
                BatchShardCompleted(
                    message_id=completed_id,
                    batch_id=msg.batch_id,
                    shard_index=msg.shard_index,
                    job_count=job_count,
                    ok=bool(marker.get("ok", True)),
                )
            ]

    now = datetime.now(UTC)
    late = (now - msg.deadlines.release_deadline).total_seconds() > runtime.timeouts.late_request_grace
    if ctx.delivery_count > 1 or late:
        reason = (
            "redelivered: an earlier delivery may already have contacted the miners"
            if ctx.delivery_count > 1
            else f"arrived after its release deadline ({msg.deadlines.release_deadline.isoformat()})"
        )
        log.warning("batch.shard.not_run", batch_id=msg.batch_id, shard=msg.shard_index, reason=reason)
        if session is not None:
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
        return [
            BatchShardCompleted(
                message_id=completed_id,
                batch_id=msg.batch_id,
                shard_index=msg.shard_index,
                job_count=0,
                ok=False,
                error=reason,
            )
        ]

    key = (msg.batch_id, msg.shard_index)
    runtime.active[key] = {
        "batch_id": msg.batch_id,
        "shard_index": msg.shard_index,
        "miners": len(msg.miners),
    }
    try:
        result = await run_shard(ShardRequest.from_message(msg), runtime.deps())
    finally:
        runtime.active.pop(key, None)
    if not result.persisted and msg.miners:
        raise ShardNotPersisted(result.error or "shard results could not be stored")
    return [
        BatchShardCompleted(
            message_id=completed_id,
            batch_id=msg.batch_id,
            shard_index=msg.shard_index,
            job_count=result.job_count,
            ok=result.ok,
            error=result.error,
        )
    ]


async def active_shards_view(ctx: ServiceContext) -> dict[str, Any]:
    """A `/debug/` view: the shards this service instance is running now."""
    runtime = ctx.dependencies.find(JobRunnerRuntime)
    if runtime is None:
        return {"installed": False, "shards": []}
    return {"installed": True, "shards": list(runtime.active.values())}
