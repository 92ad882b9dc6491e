"""One row per shard of a synthetic batch: the scheduler's barrier state and the job-runner's lease.

The scheduler writes the row when it requests the shard and moves `state` as `batch.shard.ready` and
`batch.shard.completed` arrive (docs/scheduling.md). A job-runner claims the shard by taking the lease
(`lease_owner`, `lease_expires_at`, renewed by a heartbeat) in a transaction committed at once, so no
database connection is held while the shard runs; `initial_sent_at` is set before the first initial job
request goes to a miner, so a redelivered message after a crash can tell a shard that already reached
miners (it must not send a second set) from one that did not.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from horde_common.db.base import Base


class BatchShard(Base):
    """A shard of a batch: which miners, where it stands, and who runs it."""

    __tablename__ = "batch_shards"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("synthetic_job_batches.id", ondelete="CASCADE"))
    shard_index: Mapped[int] = mapped_column(Integer)
    miner_hotkeys: Mapped[list[str]] = mapped_column(JSONB, default=list)
    # requested -> ready -> completed | failed (a shard that never completed by its deadline)
    state: Mapped[str] = mapped_column(String(16), default="requested")
    ready_executor_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    lease_heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    initial_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (UniqueConstraint("batch_id", "shard_index", name="uq_batch_shards_batch_shard"),)
