"""What every organic job of one job-runner instance shares (`OrganicRuntime`), and the one write
path of an attempt's outcome (docs/organic.md, "Running organic jobs: outcomes").

Apart from the handler so that the fresh run (`handler`) and the resumed one (`resume`) use the
same runtime and the same write without importing each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.dynamic_config import DynamicConfig
from horde_common.telemetry.events import SystemEventRecord
from horde_job_runner.organic.outcomes import Report
from horde_job_runner.organic.run import ORGANIC_TRANSPORT, OrganicTimeouts
from horde_job_runner.organic.store import stage_report
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
    "committed_status",
    "sleep_kwargs",
    "write_report",
]


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
    # Wakes this instance's outbox relay (`Broker.kick_outbox`) after a status was committed: the
    # statuses are written outside the handler's transaction, so the consumer does not kick for
    # them, and the relay would otherwise publish them only at its next poll (up to a second later,
    # docs/organic.md, "Running organic jobs: latency"). None (tests, the CLI): wait for the poll.
    kick: Callable[[], None] | None = None
    # (monotonic time, items it was built from, config): `handler._config` reuses it briefly.
    config_cache: tuple[float, object, DynamicConfig] | None = field(default=None, repr=False)


def sleep_kwargs(sleep: Sleep | None) -> dict[str, Sleep]:
    """`sleep=` for the miner link when the runtime overrides it (tests), else nothing."""
    return {} if sleep is None else {"sleep": sleep}


def committed_status(runtime: OrganicRuntime, note: StatusNote) -> None:
    """After the commit that staged `note`'s status: wake the outbox relay (if the status goes on
    the bus) and tell the in-process listener."""
    if runtime.publish_statuses and runtime.kick is not None:
        runtime.kick()
    if runtime.on_status is not None:
        runtime.on_status(note)


async def write_report(
    runtime: OrganicRuntime,
    job_uuid: uuid.UUID,
    hotkey: str,
    result: Report,
    events: Sequence[SystemEventRecord] = (),
) -> bool:
    """Row, events and status of one outcome, committed together, only while the row is PENDING
    (`store.stage_report`). Returns whether this call wrote the job's status."""
    async with runtime.sessions() as session, session.begin():
        written = await stage_report(
            session, job_uuid, hotkey, result, events, publish=runtime.publish_statuses
        )
    if written:
        note = StatusNote(job_uuid, hotkey, result.status, result.comment, result.stdout, result.stderr)
        committed_status(runtime, note)
    return written
