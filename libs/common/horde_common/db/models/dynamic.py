"""Storage of the DYNAMIC_* settings (see `horde_common.dynamic_config`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from horde_common.db.base import Base


class DynamicConfigEntry(Base):
    """One DYNAMIC_* key: its ordered items `[{value, effective_from?, reason?}, ...]`."""

    __tablename__ = "dynamic_config"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    items: Mapped[list[dict]] = mapped_column(JSONB)
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
