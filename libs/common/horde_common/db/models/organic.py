"""Organic (facilitator / admin) jobs. No score: organic jobs do not affect weights."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from horde_common.db.base import Base
from horde_common.db.models.enums import DEFAULT_EXECUTOR_CLASS, JobStatus, OrganicJobSource


class OrganicJob(Base):
    """One attempt at a facilitator job on one miner (a V2 retry replaces the row of the same uuid).

    `request` keeps the facilitator request as received (the job-runner builds the miner job from it);
    `miner_hotkey` is empty until a miner is chosen.
    """

    __tablename__ = "organic_jobs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_uuid: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    source: Mapped[str] = mapped_column(String(16), default=OrganicJobSource.FACILITATOR)
    miner_hotkey: Mapped[str] = mapped_column(String(64), default="")
    miner_address: Mapped[str] = mapped_column(String(64), default="")
    miner_address_ip_version: Mapped[int] = mapped_column(Integer, default=4)
    miner_port: Mapped[int] = mapped_column(Integer, default=0)
    executor_class: Mapped[str] = mapped_column(String(64), default=DEFAULT_EXECUTOR_CLASS)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING)
    comment: Mapped[str] = mapped_column(Text, default="")
    job_description: Mapped[str] = mapped_column(Text, default="")
    stdout: Mapped[str] = mapped_column(Text, default="")
    stderr: Mapped[str] = mapped_column(Text, default="")
    request: Mapped[dict | None] = mapped_column(JSONB, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        Index("ix_organic_jobs_updated_at", "updated_at"),
        Index("ix_organic_jobs_miner_hotkey", "miner_hotkey"),
        Index("ix_organic_jobs_pending", "created_at", postgresql_where="status = 'PENDING'"),
        # The V2 round-robin pointer (`horde_job_runner.organic.selection.last_v2_miner`), read
        # under the pick lock by every V2 job: its newest row, without scanning the table.
        Index(
            "ix_organic_jobs_v2_assigned",
            "created_at",
            "id",
            postgresql_where="(request ->> 'message_type') = 'V2JobRequest' AND miner_hotkey <> ''",
        ),
    )
