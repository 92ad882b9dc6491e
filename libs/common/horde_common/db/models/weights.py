"""Weights this validator set or committed on chain (one row per attempt that reached the chain)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from horde_common.db.base import Base
from horde_common.db.models.enums import WeightsMode, WeightsStatus


class Weights(Base):
    """`uids`/`weights` are JSON lists of equal length (u16 integers for a commit, floats for a direct
    set); `salt` is the commit salt (8 ints in 0..255) for the legacy commit/reveal path."""

    __tablename__ = "weights"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    batch_id: Mapped[int | None] = mapped_column(
        ForeignKey("synthetic_job_batches.id", ondelete="SET NULL"), nullable=True, index=True
    )
    block: Mapped[int] = mapped_column(BigInteger, index=True)
    mode: Mapped[str] = mapped_column(String(16), default=WeightsMode.SET)
    status: Mapped[str] = mapped_column(String(16), default=WeightsStatus.PENDING)
    uids: Mapped[list[int]] = mapped_column(JSONB)
    weights: Mapped[list[float]] = mapped_column(JSONB)
    salt: Mapped[list[int] | None] = mapped_column(JSONB, nullable=True)
    version_key: Mapped[int] = mapped_column(Integer)
    commit_hash: Mapped[str | None] = mapped_column(String(80), nullable=True)
    chain_message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    set_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revealed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_weights_created_revealed", "created_at", "revealed_at"),)
