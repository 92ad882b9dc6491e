"""The validator's copies of the receipts it signed (docs/miner-protocol.md §2.4.5); `miner_signature` is null
for them."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from horde_common.db.base import Base
from horde_common.db.models.enums import DEFAULT_EXECUTOR_CLASS


class _ReceiptColumns:
    """Columns every receipt table shares; `job_uuid` is unique per table."""

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_uuid: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    validator_hotkey: Mapped[str] = mapped_column(String(64))
    miner_hotkey: Mapped[str] = mapped_column(String(64))
    validator_signature: Mapped[str] = mapped_column(Text)
    miner_signature: Mapped[str | None] = mapped_column(Text, nullable=True)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Index, ...]:
        table = cls.__tablename__  # type: ignore[attr-defined]
        return (
            Index(f"ix_{table}_miner_timestamp", "miner_hotkey", "timestamp"),
            Index(f"ix_{table}_timestamp", "timestamp"),
        )


class JobStartedReceipt(_ReceiptColumns, Base):
    __tablename__ = "job_started_receipts"

    executor_class: Mapped[str] = mapped_column(String(64), default=DEFAULT_EXECUTOR_CLASS)
    max_timeout: Mapped[int] = mapped_column(Integer)
    is_organic: Mapped[bool] = mapped_column(Boolean, default=False)
    ttl: Mapped[int] = mapped_column(Integer)


class JobAcceptedReceipt(_ReceiptColumns, Base):
    __tablename__ = "job_accepted_receipts"

    time_accepted: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ttl: Mapped[int] = mapped_column(Integer)


class JobFinishedReceipt(_ReceiptColumns, Base):
    __tablename__ = "job_finished_receipts"

    time_started: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    time_took_us: Mapped[int] = mapped_column(BigInteger, default=0)
    score_str: Mapped[str] = mapped_column(String(32))
