"""Chain state kept in the database: metagraph snapshots (neurons), validator lists and cycles."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Index, Integer, String, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from horde_common.db.base import Base


class Neuron(Base):
    """One neuron of a metagraph snapshot taken at `block`. The newest snapshot is `max(block)`."""

    __tablename__ = "neurons"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    block: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(Integer)
    hotkey: Mapped[str] = mapped_column(String(64))
    coldkey: Mapped[str] = mapped_column(String(64), default="")
    stake: Mapped[float] = mapped_column(Float, default=0.0)  # TAO
    validator_permit: Mapped[bool] = mapped_column(Boolean, default=False)
    axon_ip: Mapped[str] = mapped_column(String(64), default="0.0.0.0")
    axon_ip_type: Mapped[int] = mapped_column(Integer, default=4)
    axon_port: Mapped[int] = mapped_column(Integer, default=0)
    is_serving: Mapped[bool] = mapped_column(Boolean, default=False)
    synced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("block", "uid", name="uq_neurons_block_uid"),
        Index("ix_neurons_hotkey_block", "hotkey", "block"),
    )


class Validator(Base):
    """The ordered validator list (stake >= MIN_STAKE plus the BAC hotkey, top 24) as read at `block`
    (the scheduler reads it at `cycle.start`). `position` is the rank in the (is_bac, stake) desc order."""

    __tablename__ = "validators"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    block: Mapped[int] = mapped_column(BigInteger, index=True)
    hotkey: Mapped[str] = mapped_column(String(64))
    stake: Mapped[float] = mapped_column(Float, default=0.0)
    position: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (UniqueConstraint("block", "hotkey", name="uq_validators_block_hotkey"),)


class Cycle(Base):
    """Two epochs, the half-open block range `[start, stop)`; the unit of scoring."""

    __tablename__ = "cycles"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    start: Mapped[int] = mapped_column(BigInteger)
    stop: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (UniqueConstraint("start", "stop", name="uq_cycles_start_stop"),)
