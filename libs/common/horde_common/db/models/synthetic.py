"""Synthetic job batches, their jobs and the miners' manifests."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from horde_common.db.base import Base
from horde_common.db.models.chain import Cycle
from horde_common.db.models.enums import DEFAULT_EXECUTOR_CLASS, JobStatus


class SyntheticJobBatch(Base):
    """One synthetic-jobs run of this validator, scheduled at `block` inside `cycle`.

    `block`/`cycle` are null for unstaggered debug batches (never scored). `shard_count` is how many
    job-runner shards the scheduler split the miners into (1 = the reference behaviour).
    """

    __tablename__ = "synthetic_job_batches"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    batch_uuid: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True, default=uuid.uuid4)
    cycle_id: Mapped[int | None] = mapped_column(
        ForeignKey("cycles.id", ondelete="SET NULL"), nullable=True, index=True
    )
    block: Mapped[int | None] = mapped_column(BigInteger, unique=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    accepting_results_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    shard_count: Mapped[int] = mapped_column(Integer, default=1)
    is_missed: Mapped[bool] = mapped_column(Boolean, default=False)
    scored: Mapped[bool] = mapped_column(Boolean, default=False)
    scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    cycle: Mapped[Cycle | None] = relationship(lazy="raise")

    __table_args__ = (
        Index("ix_synthetic_job_batches_unstarted", "block", postgresql_where="started_at IS NULL"),
        Index("ix_synthetic_job_batches_unscored", "started_at", postgresql_where="NOT scored"),
    )


class SyntheticJob(Base):
    """One test of one executor. `score` already includes the manifest multiplier.

    `excluded_from_scoring` marks jobs that failed through the validator's own fault (e.g. a job-runner
    crash); scoring skips them instead of penalising the miner.
    """

    __tablename__ = "synthetic_jobs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_uuid: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("synthetic_job_batches.id", ondelete="CASCADE"))
    miner_hotkey: Mapped[str] = mapped_column(String(64))
    miner_address: Mapped[str] = mapped_column(String(64), default="")
    miner_address_ip_version: Mapped[int] = mapped_column(Integer, default=4)
    miner_port: Mapped[int] = mapped_column(Integer, default=0)
    executor_class: Mapped[str] = mapped_column(String(64), default=DEFAULT_EXECUTOR_CLASS)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING)
    score: Mapped[float] = mapped_column(Float, default=0.0)
    score_manifest_multiplier: Mapped[float | None] = mapped_column(Float, nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    job_description: Mapped[str] = mapped_column(Text, default="")
    time_took_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    excluded_from_scoring: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    batch: Mapped[SyntheticJobBatch] = relationship(lazy="raise")

    __table_args__ = (
        Index("ix_synthetic_jobs_batch_class", "batch_id", "executor_class"),
        Index("ix_synthetic_jobs_miner_hotkey", "miner_hotkey"),
    )


class MinerManifest(Base):
    """Executors a miner advertised (capped) for one class in one batch, and how many passed."""

    __tablename__ = "miner_manifests"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("synthetic_job_batches.id", ondelete="CASCADE"))
    miner_hotkey: Mapped[str] = mapped_column(String(64))
    executor_class: Mapped[str] = mapped_column(String(64), default=DEFAULT_EXECUTOR_CLASS)
    executor_count: Mapped[int] = mapped_column(Integer, default=0)
    online_executor_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint(
            "miner_hotkey", "batch_id", "executor_class", name="uq_miner_manifests_miner_batch_class"
        ),
        Index("ix_miner_manifests_batch_id", "batch_id"),
        Index("ix_miner_manifests_class_created", "executor_class", "created_at"),
    )
