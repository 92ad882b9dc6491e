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
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus import HandlerContext
from horde_common.bus.messages import MinerEndpoint, OrganicJobRequested
from horde_common.db.models.enums import JobStatus
from horde_common.dynamic_config import DynamicConfig
from horde_common.service import ServiceContext
from horde_common.telemetry.events import SystemEventRecord
from horde_job_runner.organic.details import JobDetailsError, MinerJobSpec, job_spec
from horde_job_runner.organic.outcomes import OutcomeKind, Report, miner_name, not_run_report, report
from horde_job_runner.organic.run import ORGANIC_TRANSPORT, OrganicTimeouts, run_on_miner
from horde_job_runner.organic.selection import pick_v2_miner
from horde_job_runner.organic.store import (
    Axon,
    assign_miner,
    load_job,
    lookup_axon,
    stage_accepted,
    stage_report,
)
from horde_job_runner.synthetic.model import Clock, SystemClock
from horde_job_runner.synthetic.transport import (
    Sleep,
    TransportFactory,
    TransportSettings,
    WebSocketTransport,
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


@dataclass(frozen=True)
class StatusNote:
    """A status just committed (row and outbox), as an in-process listener sees it: the facilitator
    status (`accepted` / `rejected` / `failed` / `completed`), the comment and the job's output."""

    job_uuid: uuid.UUID
    miner_hotkey: str
    status: str
    comment: str = ""
    stdout: str = ""
    stderr: str = ""


StatusListener = Callable[[StatusNote], None]
"""Told of each status after its transaction committed; must not raise (it runs inside the job)."""


@dataclass
class OrganicRuntime:
    """What organic jobs need, one per service instance. `blacklist`: hotkeys never chosen for V2
    jobs (empty in the service: no facilitator flow blacklists, docs/organic.md)."""

    sessions: async_sessionmaker[AsyncSession]
    keypair: Any
    clock: Clock = field(default_factory=SystemClock)
    transport_factory: TransportFactory = WebSocketTransport
    transport_settings: TransportSettings = ORGANIC_TRANSPORT
    sleep: Sleep | None = None  # None: asyncio.sleep (tests pass a no-op for connect backoff)
    blacklist: frozenset[str] = frozenset()
    # Test hook: overrides the dynamic-config timeouts (the service reads DYNAMIC_ORGANIC_JOB_*).
    timeouts: OrganicTimeouts | None = None
    # `horde debug run-organic-job` prints the statuses as they happen (the service has no listener).
    on_status: StatusListener | None = None
    # Statuses go to the facilitator (through the outbox) only for the facilitator's own jobs: the
    # CLI's jobs (`publish_statuses=False`) were never sent by it, as in the original.
    publish_statuses: bool = True


@contextlib.asynccontextmanager
async def organic_runtime(ctx: ServiceContext) -> AsyncIterator[OrganicRuntime]:
    """The `ServiceSpec` dependency: this instance's runtime, from its sessions and hotkey."""
    keypair = ctx.hotkey
    if keypair is None:
        from horde_common.wallet import load_hotkey

        keypair = load_hotkey(ctx.settings)
    yield OrganicRuntime(sessions=ctx.sessions, keypair=keypair)


async def handle_organic_job_requested(msg: OrganicJobRequested, ctx: HandlerContext) -> None:
    """`job-runner.organic.job.requested`: run the job to its end (all attempts)."""
    await run_organic_job(ctx.dependency(OrganicRuntime), msg)


async def run_organic_job(runtime: OrganicRuntime, msg: OrganicJobRequested) -> None:
    """Run one stored facilitator job; a row that is gone or no longer PENDING is not run again
    (a redelivery of a job that already ended)."""
    job_uuid = msg.job_uuid
    async with runtime.sessions() as session:
        row = await load_job(session, job_uuid)
        config = await DynamicConfig.load(session)
        if row is None or row.status != JobStatus.PENDING:
            log.info("organic.skipped", job_uuid=str(job_uuid), status=None if row is None else row.status)
            return
        request, executor_class, named_miner = row.request, row.executor_class, row.miner_hotkey
    timeouts = runtime.timeouts or OrganicTimeouts(
        float(config.organic_job_timeout_s), float(config.organic_job_wait_timeout_s)
    )
    try:
        spec = job_spec(str(job_uuid), executor_class, request)
    except JobDetailsError as exc:
        await _write(runtime, job_uuid, named_miner, not_run_report(f"Job failed to trigger due to: {exc}"))
        return
    if spec.env:
        log.info("organic.env_not_forwarded", job_uuid=str(job_uuid), keys=len(spec.env))
    attempts = max(1, int(config.organic_job_max_retries)) if spec.chooses_miner else 1
    for attempt in range(1, attempts + 1):
        chosen = await _choose(runtime, spec, job_uuid, named_miner or msg.miner_hotkey, attempt)
        if chosen is None:  # no V2 candidate: the job ends here
            if attempt == 1:
                comment = f"No available miners with executor class {spec.executor_class}"
                await _write(runtime, job_uuid, "", not_run_report(comment))
            return
        hotkey, axon = chosen
        if axon is None:
            comment = f"Miner with hotkey={hotkey} not present in this subnetwork"
            await _write(runtime, job_uuid, hotkey, not_run_report(comment))
            continue
        if await _attempt(runtime, spec, job_uuid, axon, timeouts):
            return
        log.info(
            "organic.attempt_failed", job_uuid=str(job_uuid), attempt=attempt, retries_left=attempts - attempt
        )


async def _choose(
    runtime: OrganicRuntime, spec: MinerJobSpec, job_uuid: uuid.UUID, named: str, attempt: int
) -> tuple[str, Axon | None] | None:
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
        await assign_miner(session, job_uuid, hotkey, axon, attempt)
    return hotkey, axon


async def _attempt(
    runtime: OrganicRuntime, spec: MinerJobSpec, job_uuid: uuid.UUID, axon: Axon, timeouts: OrganicTimeouts
) -> bool:
    """One attempt on one miner, its statuses written as it goes; True if the job completed."""

    async def accepted() -> None:
        async with runtime.sessions() as session, session.begin():
            await stage_accepted(session, job_uuid, publish=runtime.publish_statuses)
        if runtime.on_status is not None:
            runtime.on_status(StatusNote(job_uuid, axon.hotkey, "accepted"))

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
        **_sleep(runtime.sleep),
    )
    name = miner_name(axon.hotkey, axon.address, axon.port)
    result = report(
        outcome, name=name, job_uuid=str(job_uuid), total_s=timeouts.total_s, wait_s=timeouts.wait_s
    )
    await _write(runtime, job_uuid, axon.hotkey, result, events)
    log.info("organic.attempt", job_uuid=str(job_uuid), miner=axon.hotkey, outcome=str(outcome.kind))
    return outcome.kind is OutcomeKind.FINISHED


def _sleep(sleep: Sleep | None) -> dict[str, Sleep]:
    return {} if sleep is None else {"sleep": sleep}


async def _write(
    runtime: OrganicRuntime,
    job_uuid: uuid.UUID,
    hotkey: str,
    result: Report,
    events: Sequence[SystemEventRecord] = (),
) -> None:
    """Row, events and status of one outcome, committed together."""
    async with runtime.sessions() as session, session.begin():
        await stage_report(session, job_uuid, hotkey, result, events, publish=runtime.publish_statuses)
    if runtime.on_status is not None:
        note = StatusNote(job_uuid, hotkey, result.status, result.comment, result.stdout, result.stderr)
        runtime.on_status(note)
