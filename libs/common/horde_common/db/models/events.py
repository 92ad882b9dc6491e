"""System events: the validator's structured telemetry, shipped to the stats collector later."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Index, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from horde_common.db.base import Base
from horde_common.event_types import SystemEventSubtype, SystemEventType

__all__ = ["SystemEvent", "SystemEventSubtype", "SystemEventType"]


class SystemEvent(Base):
    """`data` always carries `batch_uuid` for batch events, and `job_uuid`/`miner_hotkey`/`func` where
    relevant. `service` names the writer. `sent` flips once the stats collector answered 201."""

    __tablename__ = "system_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(64))
    subtype: Mapped[str] = mapped_column(String(64))
    long_description: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict] = mapped_column(JSONB, default=dict)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    service: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sent: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_system_events_timestamp", "timestamp"),
        Index("ix_system_events_type_subtype", "type", "subtype"),
        Index("ix_system_events_unsent", "id", postgresql_where="NOT sent"),
    )
