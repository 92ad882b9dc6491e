"""`organic.job.requested` in the job-runner: choose the miner, run the job, report each attempt
(docs/organic.md, "Running organic jobs").

The handler is long-running (a job takes up to the organic timeout, five minutes by default), so it
holds no database connection while the miner works: each write is a short transaction of its own.
Wiring (in `app.py`):

    @router.handler("job-runner.organic.job.requested", publishes=(), long_running=True)
    async def on_organic_job_requested(msg: OrganicJobRequested, ctx: HandlerContext) -> None:
        await handle_organic_job_requested(msg, ctx)

with `Dependency(OrganicRuntime, organic_runtime)` among the spec's dependencies, and
`OrganicJobStatus` in `publishes_outside_handlers` (the statuses go through the outbox).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from enum import Enum
from typing import Final

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.bus import HandlerContext
from horde_common.bus.messages import MinerEndpoint, OrganicJobRequested
from horde_common.db.models.enums import JobStatus
from horde_common.dynamic_config import DynamicConfig
from horde_common.dynamic_config_store import ItemsCache
from horde_common.service import ServiceContext
from horde_job_runner.organic.details import JobDetailsError, MinerJobSpec, job_spec
from horde_job_runner.organic.outcomes import OutcomeKind, miner_name, not_run_report, report
from horde_job_runner.organic.resume import ResumeEnd, ResumePoint, resume_job
from horde_job_runner.organic.run import OrganicTimeouts, run_on_miner
from horde_job_runner.organic.runtime import (
    OrganicRuntime,
    StatusListener,
    StatusNote,
    committed_status,
    sleep_kwargs,
    write_report,
)
from horde_job_runner.organic.selection import pick_v2_miner
from horde_job_runner.organic.store import (
    Axon,
    assign_miner,
    attempt_started,
    load_job,
    lookup_axon,
    stage_accepted,
)

__all__ = [
    "OrganicRuntime",
    "StatusListener",
    "StatusNote",
    "handle_organic_job_requested",
    "organic_runtime",
    "run_organic_job",
]

log = structlog.get_logger(__name__)

CONFIG_REUSE_S: Final = 5.0
"""How long a job reuses the dynamic config an earlier job read: short next to the config's own
five-minute refresh, so a dated item takes effect at most this much late."""


class _Taken(Enum):
    """Another consumer of the same job assigned this attempt first (`store.assign_miner`)."""

    TAKEN = "taken"


@contextlib.asynccontextmanager
async def organic_runtime(ctx: ServiceContext) -> AsyncIterator[OrganicRuntime]:
    """The `ServiceSpec` dependency: this instance's runtime, from its sessions and hotkey."""
    keypair = ctx.hotkey
    if keypair is None:
        from horde_common.wallet import load_hotkey

        keypair = load_hotkey(ctx.settings)
    yield OrganicRuntime(sessions=ctx.sessions, keypair=keypair, kick=_outbox_kicker(ctx))


def _outbox_kicker(ctx: ServiceContext) -> Callable[[], None]:
    """Wake the outbox relay of this instance's broker (read at call time: the broker may be
    replaced on reconnect, and is None only before start-up finished)."""

    def kick() -> None:
        if ctx.broker is not None:
            ctx.broker.kick_outbox()

    return kick


async def handle_organic_job_requested(msg: OrganicJobRequested, ctx: HandlerContext) -> None:
    """`job-runner.organic.job.requested`: run the job to its end (all attempts)."""
    await run_organic_job(ctx.dependency(OrganicRuntime), msg)


async def run_organic_job(runtime: OrganicRuntime, msg: OrganicJobRequested) -> None:
    """Run one stored facilitator job. A row that is gone or no longer PENDING is not run again (a
    redelivery of a job that already ended); a PENDING row whose attempt had started is resumed on
    its miner, not run again (docs/organic.md, "Running organic jobs: resuming after a crash")."""
    job_uuid = msg.job_uuid
    async with runtime.sessions() as session:
        row = await load_job(session, job_uuid)
        config = await _config(runtime, session)
        if row is None or row.status != JobStatus.PENDING:
            log.info("organic.skipped", job_uuid=str(job_uuid), status=None if row is None else row.status)
            return
        request, executor_class, named_miner = row.request, row.executor_class, row.miner_hotkey
        resume_at = ResumePoint.of(row) if attempt_started(row) else None
    timeouts = runtime.timeouts or OrganicTimeouts(
        float(config.organic_job_timeout_s), float(config.organic_job_wait_timeout_s)
    )
    try:
        spec = job_spec(str(job_uuid), executor_class, request)
    except JobDetailsError as exc:
        await write_report(
            runtime, job_uuid, named_miner, not_run_report(f"Job failed to trigger due to: {exc}")
        )
        return
    if spec.env:
        log.info("organic.env_not_forwarded", job_uuid=str(job_uuid), keys=len(spec.env))
    attempts = max(1, int(config.organic_job_max_retries)) if spec.chooses_miner else 1
    first = 1
    if resume_at is not None:
        if await resume_job(runtime, spec, resume_at, timeouts) is ResumeEnd.ENDED:
            return
        first = resume_at.attempt + 1
    for attempt in range(first, attempts + 1):
        chosen = await _choose(runtime, spec, job_uuid, named_miner or msg.miner_hotkey, attempt)
        if chosen is _Taken.TAKEN:  # a second consumer of this job: follow the other's attempt
            if attempt == 1:
                await _resume_taken(runtime, spec, job_uuid, timeouts)
            return
        if chosen is None:  # no V2 candidate: the job ends here
            if attempt == 1:
                comment = f"No available miners with executor class {spec.executor_class}"
                await write_report(runtime, job_uuid, "", not_run_report(comment))
            return
        hotkey, axon = chosen
        if axon is None:
            comment = f"Miner with hotkey={hotkey} not present in this subnetwork"
            if not await write_report(runtime, job_uuid, hotkey, not_run_report(comment)):
                return
            continue
        if not await _attempt(runtime, spec, job_uuid, axon, timeouts):
            return
        log.info(
            "organic.attempt_failed", job_uuid=str(job_uuid), attempt=attempt, retries_left=attempts - attempt
        )


async def _config(runtime: OrganicRuntime, session: AsyncSession) -> DynamicConfig:
    """The dynamic config, built at most once per `CONFIG_REUSE_S` per runtime: building it (every
    key resolved, then validated) costs more CPU than the rest of a job's bookkeeping. Its stored
    items are cached process-wide (`ItemsCache`); a refresh or `clear_cache` replaces them, which
    ends the reuse at once."""
    items = await ItemsCache.items(session)
    now = time.monotonic()
    cached = runtime.config_cache
    if cached is not None and cached[1] is items and now - cached[0] < CONFIG_REUSE_S:
        return cached[2]
    config = DynamicConfig(items)
    runtime.config_cache = (now, items, config)
    return config


async def _resume_taken(
    runtime: OrganicRuntime, spec: MinerJobSpec, job_uuid: uuid.UUID, timeouts: OrganicTimeouts
) -> None:
    """Another consumer started the first attempt a moment ago: resume it (it may die too); the
    final status is written once, whichever of the two gets there first."""
    async with runtime.sessions() as session:
        row = await load_job(session, job_uuid)
        point = ResumePoint.of(row) if row is not None and attempt_started(row) else None
    if point is not None:
        await resume_job(runtime, spec, point, timeouts)


async def _choose(
    runtime: OrganicRuntime, spec: MinerJobSpec, job_uuid: uuid.UUID, named: str, attempt: int
) -> tuple[str, Axon | None] | _Taken | None:
    """Pick the attempt's miner and write it to the row, in one transaction (for V2 under the
    pick lock, so the write moves the shared round-robin pointer). None: no V2 candidate."""
    async with runtime.sessions() as session, session.begin():
        if spec.chooses_miner:
            hotkey = await pick_v2_miner(session, spec.executor_class, runtime.clock.now(), runtime.blacklist)
            if hotkey is None:
                return None
        else:
            hotkey = named
        axon = await lookup_axon(session, hotkey)
        if not await assign_miner(session, job_uuid, hotkey, axon, attempt):
            return _Taken.TAKEN
    return hotkey, axon


async def _attempt(
    runtime: OrganicRuntime, spec: MinerJobSpec, job_uuid: uuid.UUID, axon: Axon, timeouts: OrganicTimeouts
) -> bool:
    """One attempt on one miner, its statuses written as it goes. True: a V2 job may try again (the
    attempt failed and its report was written); False: the job ended (completed, or another
    consumer of the job wrote its final status)."""

    async def accepted() -> None:
        async with runtime.sessions() as session, session.begin():
            staged = await stage_accepted(session, job_uuid, publish=runtime.publish_statuses)
        if staged:
            committed_status(runtime, StatusNote(job_uuid, axon.hotkey, "accepted"))

    endpoint = MinerEndpoint(hotkey=axon.hotkey, uid=-1, address=axon.address, port=axon.port)
    outcome, events = await run_on_miner(
        spec,
        endpoint,
        runtime.keypair,
        timeouts,
        accepted,
        clock=runtime.clock,
        transport_factory=runtime.transport_factory,
        transport_settings=runtime.transport_settings,
        **sleep_kwargs(runtime.sleep),
    )
    name = miner_name(axon.hotkey, axon.address, axon.port)
    result = report(
        outcome, name=name, job_uuid=str(job_uuid), total_s=timeouts.total_s, wait_s=timeouts.wait_s
    )
    written = await write_report(runtime, job_uuid, axon.hotkey, result, events)
    log.info(
        "organic.attempt",
        job_uuid=str(job_uuid),
        miner=axon.hotkey,
        outcome=str(outcome.kind),
        written=written,
    )
    return written and outcome.kind is not OutcomeKind.FINISHED
