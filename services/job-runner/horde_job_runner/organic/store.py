"""The database side of an organic job: the row, its events and its facilitator statuses
(docs/organic.md, "Running organic jobs: outcomes").

Every status goes out through the outbox in the transaction that writes the row it reports, so the
facilitator never hears of an outcome the database does not hold, nor the other way round.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.bus.messages import OrganicJobStatus
from horde_common.bus.outbox import add_to_outbox
from horde_common.db.models.chain import Neuron
from horde_common.db.models.enums import JobStatus
from horde_common.db.models.organic import OrganicJob
from horde_common.telemetry.events import SystemEventRecord, record_events_bulk
from horde_job_runner.organic.outcomes import Report, accepted_response

__all__ = ["SERVICE", "Axon", "assign_miner", "load_job", "lookup_axon", "stage_accepted", "stage_report"]

SERVICE: Final = "job-runner"
"""`system_events.service` of the events written here."""


@dataclass(frozen=True)
class Axon:
    """Where a miner listens, from the newest metagraph snapshot."""

    hotkey: str
    address: str
    port: int
    ip_version: int


async def load_job(session: AsyncSession, job_uuid: uuid.UUID) -> OrganicJob | None:
    row: OrganicJob | None = await session.scalar(select(OrganicJob).where(OrganicJob.job_uuid == job_uuid))
    return row


async def lookup_axon(session: AsyncSession, hotkey: str) -> Axon | None:
    """The miner's axon in the newest snapshot; None if the hotkey is not in it."""
    newest = select(func.max(Neuron.block)).scalar_subquery()
    neuron: Neuron | None = await session.scalar(
        select(Neuron).where(Neuron.block == newest, Neuron.hotkey == hotkey).limit(1)
    )
    if neuron is None:
        return None
    return Axon(hotkey, neuron.axon_ip, neuron.axon_port, neuron.axon_ip_type)


async def assign_miner(
    session: AsyncSession, job_uuid: uuid.UUID, hotkey: str, axon: Axon | None, attempt: int
) -> None:
    """Start an attempt on `hotkey`: the row is as the original's freshly created one (PENDING, no
    comment, no output), with `created_at` the time of the assignment — which is what the V2
    round-robin pointer reads (`selection.last_v2_miner`). `clock_timestamp()`, not `now()`: under
    the pick lock it orders assignments as they happened, not as their transactions began."""
    values: dict[str, Any] = {
        "miner_hotkey": hotkey,
        "attempt": attempt,
        "status": str(JobStatus.PENDING),
        "comment": "",
        "stdout": "",
        "stderr": "",
        "created_at": func.clock_timestamp(),
    }
    if axon is not None:
        values |= {
            "miner_address": axon.address,
            "miner_address_ip_version": axon.ip_version,
            "miner_port": axon.port,
        }
    await session.execute(update(OrganicJob).where(OrganicJob.job_uuid == job_uuid).values(**values))


def _status(
    job_uuid: uuid.UUID, status: str, comment: str, miner_response: dict[str, Any]
) -> OrganicJobStatus:
    return OrganicJobStatus(
        job_uuid=job_uuid,
        status=status,  # type: ignore[arg-type]  # one of the four literals, from `outcomes`
        comment=comment,
        miner_response=miner_response,
    )


async def stage_accepted(session: AsyncSession, job_uuid: uuid.UUID, *, publish: bool = True) -> None:
    """The `accepted` status (the row stays PENDING until the job ends); `publish=False` (a job the
    facilitator never sent, e.g. from the CLI) keeps it off the bus."""
    if publish:
        await add_to_outbox(session, _status(job_uuid, "accepted", "", accepted_response(str(job_uuid))))


async def stage_report(
    session: AsyncSession,
    job_uuid: uuid.UUID,
    miner_hotkey: str,
    report: Report,
    extra_events: Sequence[SystemEventRecord] = (),
    *,
    publish: bool = True,
) -> None:
    """Row, event(s) and status of an outcome, in the caller's transaction (in that order, as the
    original did). The event names the miner (the original named the validator there). With
    `publish=False` the status stays off the bus (a job the facilitator never sent)."""
    await session.execute(
        update(OrganicJob)
        .where(OrganicJob.job_uuid == job_uuid)
        .values(status=report.row_status, comment=report.comment, stdout=report.stdout, stderr=report.stderr)
    )
    data = {"job_uuid": str(job_uuid), "miner_hotkey": miner_hotkey}
    events = [*extra_events, SystemEventRecord(report.event_type, report.event_subtype, report.comment, data)]
    await record_events_bulk(session, events, service=SERVICE)
    if publish:
        await add_to_outbox(
            session, _status(job_uuid, report.status, report.comment, report.miner_response(str(job_uuid)))
        )
