"""The facilitator gateway's ledger of status updates written to the facilitator
(docs/organic.md, "Facilitator gateway").

One row per `organic.job.status` bus message whose `V0JobStatusUpdate` frame was written to an
authenticated facilitator socket, inserted in its own short transaction right after the write and
before the bus message is acknowledged. A redelivery of that message (a gateway killed before its
ack, a broker restart, the outbox relay publishing a row twice) finds the row and is acknowledged
without a second frame. `job_uuid` and `status` make the final statuses sent per job countable;
`message_sent_at` (the bus message's creation time at the job-runner) lets an update older than a
final status already sent for its job be recognised as stale; `seq` (the message's per-job
sequence number, 0 when it carried none) gives the highest one written per job, so a gateway that
restarted still knows which of a job's updates went out.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from horde_common.db.base import Base


class FacilitatorStatusSent(Base):
    """A status update the facilitator was sent, keyed by the bus message that carried it."""

    __tablename__ = "facilitator_status_sent"

    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    job_uuid: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    status: Mapped[str] = mapped_column(String(16))  # accepted, rejected, failed, completed
    message_sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # `OrganicJobStatus.seq`
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("ix_facilitator_status_sent_job_uuid", "job_uuid"),
        Index("ix_facilitator_status_sent_sent_at", "sent_at"),
    )
