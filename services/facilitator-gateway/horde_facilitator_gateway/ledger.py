"""The ledger of status updates written to the facilitator: `facilitator_status_sent`
(docs/organic.md, "Facilitator gateway": exactly one frame per status message).

The bus delivers `organic.job.status` at least once: a gateway killed after writing a frame but
before its ack, a broker restart or an outbox row published twice all deliver the same message (same
`message_id`) again. The consumer's own idempotency row (`processed_messages`) is committed only
after the handler returned; this ledger narrows the window to the write itself: the link's drainer
inserts the row in its own short transaction right after the frame is on the socket, before it
writes anything else, and a delivery whose message id is in the ledger is acknowledged unsent.

Deduplication is by message id only. Two messages with different ids are two updates, even with
equal job, status and comment: a V2 job retried on the same miner (the only candidate) reports an
identical `failed` per attempt (docs/organic.md, "Running organic jobs: V2 retries"), and the
job-runner's message ids are random, so equal content proves nothing. Such repeats are counted
(`finals_sent`), never suppressed.

One more update is not sent: a *stale* one, which would move the facilitator's view of its job
back (the bus gives no order between messages delivered concurrently, so one job's updates may
overtake each other). With a per-job `seq` (docs/organic.md, "Facilitator gateway") that is one
whose `seq` is at most the highest of its job in the ledger: the row keeps each update's `seq`, so
the order survives a gateway restart. Without one (`seq` 0, a sender from before the field): one
created (`sent_at`) before a final status of its job that already went out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from sqlalchemy import DateTime, Integer, String, and_, bindparam, case, delete, func, or_, select, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.messages import OrganicJobStatus
from horde_common.db.models.facilitator import FacilitatorStatusSent
from horde_common.db.models.organic import OrganicJob
from horde_facilitator_gateway.outbound import FINAL_STATUSES

STATUS_SENT_KEEP: Final = timedelta(days=7)
"""Ledger rows must outlive any redelivery of their message; like `processed_messages`, a week is
ample (RabbitMQ redelivers within minutes, the outbox relay within its retry period)."""


_RECORD: Final = text(
    "INSERT INTO facilitator_status_sent (message_id, job_uuid, status, message_sent_at, seq) "
    "VALUES (:message_id, :job_uuid, :status, :message_sent_at, :seq) "
    "ON CONFLICT (message_id) DO NOTHING"
).bindparams(
    bindparam("message_id", type_=UUID(as_uuid=True)),
    bindparam("job_uuid", type_=UUID(as_uuid=True)),
    bindparam("status", type_=String()),
    bindparam("message_sent_at", type_=DateTime(timezone=True)),
    bindparam("seq", type_=Integer()),
)
"""`record`'s insert, as text: SQLAlchemy compiles a PostgreSQL `INSERT … ON CONFLICT` afresh on
every execution (it has no cache key), which cost the gateway more CPU than the query itself."""


@dataclass(frozen=True)
class Checked:
    """A status message against the ledger: `outcome` and `highest` as `StatusLedger.check`
    returns them, `finals`: final statuses of its job already written."""

    outcome: Literal["new", "duplicate", "stale"]
    highest: int
    finals: int


class StatusLedger:
    """Reads and writes `facilitator_status_sent`, each call its own short transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def check(self, msg: OrganicJobStatus) -> tuple[Literal["new", "duplicate", "stale"], int]:
        """Whether `msg` was already written (`duplicate`), would move its job back (`stale`: a
        `seq` at most the job's highest written, or without `seq` a final status of its job made
        after it went out) or is `new`, and the job's highest `seq` written (0: none)."""
        checked = await self.check_counting(msg)
        return checked.outcome, checked.highest

    async def check_counting(self, msg: OrganicJobStatus) -> Checked:
        """`check`, plus how many final statuses of the job were written before (for the
        repeated-final statistic, without a query of its own). One query over the message's row
        and its job's rows (both indexed)."""
        sent = FacilitatorStatusSent
        of_job = sent.job_uuid == msg.job_uuid
        newer_final = and_(sent.status.in_(FINAL_STATUSES), sent.message_sent_at > msg.sent_at)
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(
                        func.bool_or(sent.message_id == msg.message_id),
                        func.bool_or(and_(of_job, newer_final)),
                        func.max(case((of_job, sent.seq), else_=0)),
                        func.count().filter(and_(of_job, sent.status.in_(FINAL_STATUSES))),
                    ).where(or_(sent.message_id == msg.message_id, of_job))
                )
            ).one()
        duplicate, newer_final_sent, highest = bool(row[0]), bool(row[1]), int(row[2] or 0)
        finals = int(row[3] or 0)
        if duplicate:
            return Checked("duplicate", highest, finals)
        stale = msg.seq <= highest if msg.seq > 0 else newer_final_sent
        return Checked("stale" if stale else "new", highest, finals)

    async def record(
        self, message_id: uuid.UUID, job_uuid: uuid.UUID, status: str, message_sent_at: datetime, seq: int = 0
    ) -> None:
        """The frame of this message was written: commit that fact (a second record is a no-op)."""
        params = {
            "message_id": message_id,
            "job_uuid": job_uuid,
            "status": status,
            "message_sent_at": message_sent_at,
            "seq": seq,
        }
        async with self._sessions() as session, session.begin():
            await session.execute(_RECORD, params)

    async def finals_sent(self, job_uuid: uuid.UUID) -> int:
        """How many final statuses of this job the facilitator was sent (one per V2 attempt)."""
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(FacilitatorStatusSent)
                .where(
                    FacilitatorStatusSent.job_uuid == job_uuid,
                    FacilitatorStatusSent.status.in_(FINAL_STATUSES),
                )
            )
        return int(count or 0)


async def count_jobs_by_status(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """`organic_jobs` rows by status: one `GROUP BY` over the table, cheap at the sizes organic
    traffic reaches (thousands of rows a day), so it runs on a timer and per debug view."""
    async with sessions() as session:
        rows = await session.execute(select(OrganicJob.status, func.count()).group_by(OrganicJob.status))
    return {str(status): int(count) for status, count in rows.all()}


async def prune_status_sent(session: AsyncSession, now: datetime) -> dict[str, int]:
    """Ledger rows older than `STATUS_SENT_KEEP` (a `housekeeping_loop` prune)."""
    result = await session.execute(
        delete(FacilitatorStatusSent).where(FacilitatorStatusSent.sent_at < now - STATUS_SENT_KEEP)
    )
    return {"facilitator_status_sent": int(getattr(result, "rowcount", 0) or 0)}
