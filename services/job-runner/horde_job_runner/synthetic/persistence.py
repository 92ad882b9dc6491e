"""What a shard reads from and writes to Postgres (spec A §3.3, §3.12).

A shard's results are written in ONE transaction with a handful of bulk statements (reference
measurements lesson 5: the reference spent ~1.15 s of CPU on per-row ORM work at 512 jobs):
jobs, manifests, the three receipt tables and the system events, each one `INSERT ... VALUES`
(SQLAlchemy "insertmanyvalues"), plus one `UPDATE` of the batch. Either all of it is stored or none.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db.models import (
    JobAcceptedReceipt,
    JobFinishedReceipt,
    JobStartedReceipt,
    MinerManifest,
    SyntheticJob,
    SyntheticJobBatch,
    SystemEvent,
)
from horde_common.telemetry import SystemEventRecord, SystemEventSubtype, SystemEventType, record_events_bulk
from horde_job_runner.synthetic.model import DynamicValues

__all__ = ["BatchStore", "ShardRows", "shard_marker_exists"]

# Chunk bulk inserts so one statement never exceeds Postgres' 32767 bind parameters.
_CHUNK = 1000


@dataclass
class ShardRows:
    """Everything a shard writes, ready for bulk inserts."""

    batch_id: int
    jobs: list[dict[str, Any]] = field(default_factory=list)
    manifests: list[dict[str, Any]] = field(default_factory=list)
    started_receipts: list[dict[str, Any]] = field(default_factory=list)
    accepted_receipts: list[dict[str, Any]] = field(default_factory=list)
    finished_receipts: list[dict[str, Any]] = field(default_factory=list)
    events: list[SystemEventRecord] = field(default_factory=list)
    accepting_results_until: datetime | None = None
    complete_batch: bool = False  # debug batches: mark the batch completed too

    @property
    def row_count(self) -> int:
        return (
            len(self.jobs)
            + len(self.manifests)
            + len(self.started_receipts)
            + len(self.accepted_receipts)
            + len(self.finished_receipts)
            + len(self.events)
        )


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterable[Sequence[dict[str, Any]]]:
    for i in range(0, len(rows), _CHUNK):
        yield rows[i : i + _CHUNK]


class BatchStore:
    """The shard's database access, on its own short transactions (never the bus handler's)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, service: str = "job-runner") -> None:
        self.sessions = sessions
        self.service = service

    # --- reads ---------------------------------------------------------------------------------

    async def batch_uuid(self, batch_id: int) -> uuid.UUID | None:
        async with self.sessions() as session:
            value: uuid.UUID | None = await session.scalar(
                select(SyntheticJobBatch.batch_uuid).where(SyntheticJobBatch.id == batch_id)
            )
            return value

    async def previous_online_counts(
        self, batch_id: int, hotkeys: Iterable[str]
    ) -> dict[str, dict[str, int]]:
        """`online_executor_count` per (miner, class) of the latest batch before this one (§3.3).

        A (miner, class) absent from the result means "absent" (not 0): the miner had no manifest
        row for that class in that batch, or there is no previous batch.
        """
        wanted = list(set(hotkeys))
        if not wanted:
            return {}
        async with self.sessions() as session:
            previous_id = await session.scalar(
                select(func.max(SyntheticJobBatch.id)).where(SyntheticJobBatch.id < batch_id)
            )
            if previous_id is None:
                return {}
            rows = (
                await session.execute(
                    select(
                        MinerManifest.miner_hotkey,
                        MinerManifest.executor_class,
                        MinerManifest.online_executor_count,
                    ).where(MinerManifest.batch_id == previous_id, MinerManifest.miner_hotkey.in_(wanted))
                )
            ).all()
        out: dict[str, dict[str, int]] = {}
        for hotkey, executor_class, online in rows:
            out.setdefault(hotkey, {})[executor_class] = online
        return out

    async def dynamic_values(self) -> DynamicValues:
        from horde_common.dynamic_config import DynamicConfig

        async with self.sessions() as session:
            return DynamicValues.from_config(await DynamicConfig.load(session))

    async def recent_event_exists(self, type_: str, subtype: str, within: timedelta) -> bool:
        """Is there an event of this type/subtype newer than `within`? (at-most-once-per-24h events)"""
        since = datetime.now(UTC) - within
        async with self.sessions() as session:
            found = await session.scalar(
                select(SystemEvent.id)
                .where(
                    SystemEvent.type == type_, SystemEvent.subtype == subtype, SystemEvent.timestamp >= since
                )
                .limit(1)
            )
            return found is not None

    # --- writes --------------------------------------------------------------------------------

    async def create_batch(self, *, started_at: datetime | None = None) -> tuple[int, uuid.UUID]:
        """A batch without block or cycle (debug / unstaggered; never scored by weights)."""
        async with self.sessions.begin() as session:
            batch = SyntheticJobBatch(started_at=started_at or datetime.now(UTC))
            session.add(batch)
            await session.flush()
            return batch.id, batch.batch_uuid

    async def persist(self, rows: ShardRows, *, fast: bool = True) -> None:
        """Write the whole shard in one transaction (see the module docstring).

        `fast`: jobs, manifests and receipts go in with `COPY` (a fraction of the CPU of bound
        INSERTs). A retry after a failed attempt uses `INSERT ... ON CONFLICT DO NOTHING` instead,
        in case the failed attempt had in fact committed.
        """
        async with self.sessions.begin() as session:
            await write_shard_rows(session, rows, service=self.service, fast=fast)


async def _copy(session: AsyncSession, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """`COPY` `rows` (dicts with the same keys) into `model`'s table, in the session's transaction."""
    if not rows:
        return
    columns = list(rows[0])
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    await driver.copy_records_to_table(
        model.__tablename__, records=[tuple(r[c] for c in columns) for r in rows], columns=columns
    )


async def write_shard_rows(
    session: AsyncSession, rows: ShardRows, *, service: str, fast: bool = False
) -> None:
    values: dict[str, Any] = {}
    if rows.accepting_results_until is not None:
        values["accepting_results_until"] = func.least(
            func.coalesce(SyntheticJobBatch.accepting_results_until, rows.accepting_results_until),
            rows.accepting_results_until,
        )
    if rows.complete_batch:
        values["completed_at"] = datetime.now(UTC)
    if values:
        await session.execute(
            update(SyntheticJobBatch).where(SyntheticJobBatch.id == rows.batch_id).values(**values)
        )
    if fast:
        for model, copy_rows in (
            (SyntheticJob, rows.jobs),
            (MinerManifest, rows.manifests),
            (JobStartedReceipt, rows.started_receipts),
            (JobAcceptedReceipt, rows.accepted_receipts),
            (JobFinishedReceipt, rows.finished_receipts),
        ):
            await _copy(session, model, copy_rows)
        for i in range(0, len(rows.events), _CHUNK):
            await record_events_bulk(session, rows.events[i : i + _CHUNK], service=service)
        return
    for chunk in _chunks(rows.jobs):
        await session.execute(
            pg_insert(SyntheticJob).on_conflict_do_nothing(index_elements=["job_uuid"]), chunk
        )
    for chunk in _chunks(rows.manifests):
        await session.execute(
            pg_insert(MinerManifest).on_conflict_do_nothing(
                index_elements=["miner_hotkey", "batch_id", "executor_class"]
            ),
            chunk,
        )
    for model, receipt_rows in (
        (JobStartedReceipt, rows.started_receipts),
        (JobAcceptedReceipt, rows.accepted_receipts),
        (JobFinishedReceipt, rows.finished_receipts),
    ):
        for chunk in _chunks(receipt_rows):
            await session.execute(pg_insert(model).on_conflict_do_nothing(index_elements=["job_uuid"]), chunk)
    for i in range(0, len(rows.events), _CHUNK):
        await record_events_bulk(session, rows.events[i : i + _CHUNK], service=service)


async def shard_marker_exists(session: AsyncSession, shard_message_id: uuid.UUID) -> dict[str, Any] | None:
    """The SYNTHETIC_BATCH telemetry event a persisted shard wrote (its data), if any.

    A redelivered `batch.shard.requested` whose shard was already persisted (the handler's own
    commit failed after ours) finds it here and just reports completion again.
    """
    data: dict[str, Any] | None = await session.scalar(
        select(SystemEvent.data)
        .where(
            SystemEvent.type == str(SystemEventType.VALIDATOR_TELEMETRY),
            SystemEvent.subtype == str(SystemEventSubtype.SYNTHETIC_BATCH),
            SystemEvent.data["shard_message_id"].astext == str(shard_message_id),
        )
        .limit(1)
    )
    return data
