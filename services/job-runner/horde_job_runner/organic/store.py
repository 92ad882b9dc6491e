"""The database side of an organic job: the row, its events and its facilitator statuses
(docs/organic.md, "Running organic jobs: outcomes").

Every status goes out through the outbox in the transaction that writes the row it reports, so the
facilitator never hears of an outcome the database does not hold, nor the other way round.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.bus.messages import OrganicJobStatus
from horde_common.bus.outbox import add_to_outbox
from horde_common.db.models.bus import OutboxMessage
from horde_common.db.models.chain import Neuron
from horde_common.db.models.enums import JobStatus
from horde_common.db.models.organic import OrganicJob
from horde_common.telemetry.events import SystemEventRecord, record_events_bulk
from horde_job_runner.organic.outcomes import Report, accepted_response

__all__ = [
    "SERVICE",
    "Axon",
    "accepted_staged",
    "assign_miner",
    "attempt_started",
    "load_job",
    "lookup_axon",
    "stage_accepted",
    "stage_report",
    "status_seq",
    "still_pending",
]

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


def attempt_started(row: OrganicJob) -> bool:
    """Whether the row records an attempt that may have reached its miner: still PENDING with the
    miner's address written (`assign_miner` writes it before the miner is contacted). A row the
    gateway wrote names the miner of a V0/V1 request but has no address yet: it is not started."""
    return row.status == JobStatus.PENDING and bool(row.miner_address) and row.miner_port > 0


async def assign_miner(
    session: AsyncSession,
    job_uuid: uuid.UUID,
    hotkey: str,
    axon: Axon | None,
    attempt: int,
) -> bool:
    """Start an attempt on `hotkey`: the row is as the original's freshly created one (PENDING, no
    comment, no output), with `created_at` the time of the assignment — which is what the V2
    round-robin pointer reads (`selection.last_v2_miner`). `clock_timestamp()`, not `now()`: under
    the pick lock it orders assignments as they happened, not as their transactions began.

    Conditional, so that two consumers of one job never both start an attempt: the first attempt
    only on a PENDING row without an attempt (no address), a later one only on the row the previous
    attempt of this consumer left FAILED. False: another consumer got there first (nothing written).
    A miner without an axon clears the address, so the row never points at an earlier attempt's miner.
    """
    values: dict[str, Any] = {
        "miner_hotkey": hotkey,
        "attempt": attempt,
        "status": str(JobStatus.PENDING),
        "comment": "",
        "stdout": "",
        "stderr": "",
        "created_at": func.clock_timestamp(),
        "miner_address": "" if axon is None else axon.address,
        "miner_port": 0 if axon is None else axon.port,
    }
    if axon is not None:
        values["miner_address_ip_version"] = axon.ip_version
    if attempt <= 1:
        claim = (OrganicJob.status == str(JobStatus.PENDING)) & (OrganicJob.miner_address == "")
    else:
        claim = (OrganicJob.status == str(JobStatus.FAILED)) & (OrganicJob.attempt == attempt - 1)
    result = await session.execute(
        update(OrganicJob).where(OrganicJob.job_uuid == job_uuid, claim).values(**values)
    )
    return _rowcount(result) > 0


async def still_pending(session: AsyncSession, job_uuid: uuid.UUID) -> bool:
    """Whether no final status was written yet (a resumed attempt stops waiting once one was)."""
    status = await session.scalar(select(OrganicJob.status).where(OrganicJob.job_uuid == job_uuid))
    return status == JobStatus.PENDING


async def accepted_staged(session: AsyncSession, job_uuid: uuid.UUID, since: datetime) -> bool:
    """Whether an `accepted` status of this job was staged since `since` (the attempt's start):
    a resumed attempt then does not send a second one."""
    found = await session.scalar(
        select(OutboxMessage.id)
        .where(OutboxMessage.routing_key == OrganicJobStatus.ROUTING_KEY)
        .where(OutboxMessage.body["job_uuid"].astext == str(job_uuid))
        .where(OutboxMessage.body["status"].astext == "accepted")
        .where(OutboxMessage.created_at >= since)
        .limit(1)
    )
    return found is not None


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def status_seq(attempt: int, status: str) -> int:
    """The `OrganicJobStatus.seq` of a status of attempt `attempt` (the row's `attempt` column,
    docs/organic.md "Facilitator gateway"): `accepted` is 2k-1, the attempt's outcome 2k. An
    attempt sends at most one `accepted`, then one outcome, and the next attempt starts only after
    that outcome was written, so the numbers grow in the order the statuses are made. A report
    written before any attempt started (no miner) finds the row's initial attempt 1: seq 2, the
    job's only status. A resumed attempt's `accepted` gets its attempt's number again, so the
    gateway drops it as a copy should the first one have gone out."""
    k = max(1, attempt)
    return 2 * k - 1 if status == "accepted" else 2 * k


def _status(
    job_uuid: uuid.UUID, status: str, comment: str, miner_response: dict[str, Any], attempt: int
) -> OrganicJobStatus:
    return OrganicJobStatus(
        job_uuid=job_uuid,
        status=status,  # type: ignore[arg-type]  # one of the four literals, from `outcomes`
        comment=comment,
        miner_response=miner_response,
        seq=status_seq(attempt, status),
    )


async def stage_accepted(session: AsyncSession, job_uuid: uuid.UUID, *, publish: bool = True) -> bool:
    """The `accepted` status (the row stays PENDING until the job ends); `publish=False` (a job the
    facilitator never sent, e.g. from the CLI) keeps it off the bus. Nothing is staged once the job
    has its final status (another consumer ended it): returns whether the row was still PENDING."""
    attempt = await session.scalar(
        update(OrganicJob)
        .where(OrganicJob.job_uuid == job_uuid, OrganicJob.status == str(JobStatus.PENDING))
        .values(updated_at=func.now())
        .returning(OrganicJob.attempt)
    )
    if attempt is None:
        return False
    if publish:
        response = accepted_response(str(job_uuid))
        await add_to_outbox(session, _status(job_uuid, "accepted", "", response, attempt))
    return True


async def stage_report(
    session: AsyncSession,
    job_uuid: uuid.UUID,
    miner_hotkey: str,
    report: Report,
    extra_events: Sequence[SystemEventRecord] = (),
    *,
    publish: bool = True,
) -> bool:
    """Row, event(s) and status of an outcome, in the caller's transaction (in that order, as the
    original did). The event names the miner (the original named the validator there). With
    `publish=False` the status stays off the bus (a job the facilitator never sent).

    Written only while the row is PENDING: of two consumers racing on one job (a redelivery beside
    a live one, docs/organic.md "resuming after a crash") only the first reports; the other's
    outcome event and status are dropped (its miner events are kept). Returns whether it wrote."""
    attempt = await session.scalar(
        update(OrganicJob)
        .where(OrganicJob.job_uuid == job_uuid, OrganicJob.status == str(JobStatus.PENDING))
        .values(status=report.row_status, comment=report.comment, stdout=report.stdout, stderr=report.stderr)
        .returning(OrganicJob.attempt)
    )
    written = attempt is not None
    data = {"job_uuid": str(job_uuid), "miner_hotkey": miner_hotkey}
    events = list(extra_events)
    if written:
        events.append(SystemEventRecord(report.event_type, report.event_subtype, report.comment, data))
    if events:
        await record_events_bulk(session, events, service=SERVICE)
    if attempt is not None and publish:
        response = report.miner_response(str(job_uuid))
        await add_to_outbox(session, _status(job_uuid, report.status, report.comment, response, attempt))
    return written
