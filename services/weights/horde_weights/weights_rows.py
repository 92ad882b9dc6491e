"""Database reads and writes of a weights run (`docs/scoring.md` §2). No decisions here.

A run holds a transaction-scoped advisory lock in a session of its own for its whole length, so
concurrent runs (two replicas, the minute loop and a `batch.completed` trigger) are no-ops and a
crashed run's lock goes with its connection. The `weights` row of a write is committed as `pending`
before the chain is called and flipped in the same transaction that marks the batch scored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import func, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db.models import Cycle, SyntheticJob, SyntheticJobBatch, Weights
from horde_common.db.models import Neuron as NeuronRow
from horde_common.db.models.enums import JobStatus, WeightsMode, WeightsStatus
from horde_weights.batch_selection import BatchDescriptor
from horde_weights.scoring import ScoredJob

Sessions = async_sessionmaker[AsyncSession]

# Advisory lock keys (arbitrary, fixed 64-bit values): one weight-setting run at a time, and one
# reveal at a time, across every replica of the service.
WEIGHT_SETTING_LOCK_KEY: Final = 0x7765_6967_6874_7331  # "weights1"
REVEAL_LOCK_KEY: Final = 0x7765_6967_6874_7332  # "weights2"
# A row in one of these states is on chain: its batch must never be written again.
WRITTEN_STATUSES: Final = (WeightsStatus.SET, WeightsStatus.COMMITTED, WeightsStatus.REVEALED)


@dataclass(frozen=True, slots=True)
class SnapshotNeuron:
    """One uid of the newest stored metagraph snapshot (`NeuronLike` for `uid_vector`)."""

    uid: int
    hotkey: str


@dataclass(frozen=True, slots=True)
class WeightsRecord:
    """A `weights` row as the run and the reveal loop read it."""

    id: int
    batch_id: int | None
    block: int
    mode: str
    status: str
    uids: list[int]
    weights: list[Any]
    salt: list[int] | None
    version_key: int
    commit_hash: str | None
    created_at: datetime


def _record(row: Weights) -> WeightsRecord:
    return WeightsRecord(
        id=row.id,
        batch_id=row.batch_id,
        block=row.block,
        mode=row.mode,
        status=row.status,
        uids=list(row.uids),
        weights=list(row.weights),
        salt=list(row.salt) if row.salt is not None else None,
        version_key=row.version_key,
        commit_hash=row.commit_hash,
        created_at=row.created_at,
    )


@asynccontextmanager
async def try_lock(sessions: Sessions, key: int) -> AsyncIterator[bool]:
    """Yield whether this run got the lock `key`; it is held until the block exits."""
    async with sessions() as session, session.begin():
        got = await session.scalar(sql_text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key})
        yield bool(got)


async def unscored_batches(session: AsyncSession) -> list[BatchDescriptor]:
    """Every unscored batch with its cycle's stop block (None without a cycle) and whether it completed."""
    rows = await session.execute(
        select(
            SyntheticJobBatch.id,
            SyntheticJobBatch.started_at,
            Cycle.stop,
            SyntheticJobBatch.scored,
            SyntheticJobBatch.completed_at.is_not(None),
        )
        .outerjoin(Cycle, Cycle.id == SyntheticJobBatch.cycle_id)
        .where(SyntheticJobBatch.scored.is_(False))
    )
    return [
        BatchDescriptor(batch_id=bid, started_at=started, cycle_stop=stop, scored=scored, completed=done)
        for bid, started, stop, scored, done in rows.all()
    ]


async def batch_jobs(session: AsyncSession, batch_id: int) -> list[ScoredJob]:
    """The batch's jobs as scoring reads them (`docs/scoring.md` §1.1)."""
    rows = await session.execute(
        select(
            SyntheticJob.miner_hotkey,
            SyntheticJob.executor_class,
            SyntheticJob.score,
            SyntheticJob.status,
            SyntheticJob.excluded_from_scoring,
            SyntheticJob.score_manifest_multiplier,
        ).where(SyntheticJob.batch_id == batch_id)
    )
    return [
        ScoredJob(
            miner_hotkey=hotkey,
            executor_class=executor_class,
            score=score,
            success=status in (JobStatus.COMPLETED, JobStatus.EXCUSED),
            excluded=excluded,
            multiplier=multiplier,
            excused=status == JobStatus.EXCUSED,
        )
        for hotkey, executor_class, score, status, excluded, multiplier in rows.all()
    ]


async def newest_snapshot(session: AsyncSession) -> list[SnapshotNeuron]:
    """The neurons of the newest metagraph snapshot (empty before the first sync)."""
    newest = select(func.max(NeuronRow.block)).scalar_subquery()
    rows = await session.execute(
        select(NeuronRow.uid, NeuronRow.hotkey).where(NeuronRow.block == newest).order_by(NeuronRow.uid)
    )
    return [SnapshotNeuron(uid=uid, hotkey=hotkey) for uid, hotkey in rows.all()]


async def batch_weights(session: AsyncSession, batch_id: int) -> list[WeightsRecord]:
    """The batch's `weights` rows, oldest first."""
    rows = await session.scalars(select(Weights).where(Weights.batch_id == batch_id).order_by(Weights.id))
    return [_record(row) for row in rows.all()]


async def insert_pending(
    sessions: Sessions,
    *,
    batch_id: int,
    block: int,
    mode: WeightsMode,
    uids: Sequence[int],
    weights: Sequence[float] | Sequence[int],
    version_key: int,
    salt: Sequence[int] | None = None,
    commit_hash: str | None = None,
) -> int:
    """Commit a `pending` row before the chain is called; returns its id."""
    async with sessions.begin() as session:
        row = Weights(
            batch_id=batch_id,
            block=block,
            mode=mode,
            status=WeightsStatus.PENDING,
            uids=list(uids),
            weights=list(weights),
            salt=list(salt) if salt is not None else None,
            version_key=version_key,
            commit_hash=commit_hash,
        )
        session.add(row)
        await session.flush()
        return row.id


async def mark_scored(session: AsyncSession, batch_ids: Iterable[int], now: datetime) -> None:
    """Mark batches scored (in the caller's transaction)."""
    ids = list(batch_ids)
    if ids:
        await session.execute(
            update(SyntheticJobBatch)
            .where(SyntheticJobBatch.id.in_(ids), SyntheticJobBatch.scored.is_(False))
            .values(scored=True, scored_at=now)
        )


async def mark_batches_scored(sessions: Sessions, batch_ids: Iterable[int]) -> None:
    """Mark batches scored in a transaction of their own."""
    async with sessions.begin() as session:
        await mark_scored(session, batch_ids, datetime.now(UTC))


async def finish_written(
    sessions: Sessions,
    weights_id: int,
    *,
    status: WeightsStatus,
    block: int | None,
    message: str,
    batch_ids: Iterable[int],
) -> None:
    """The write is on chain: flip the row and mark the batches scored, in one transaction."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {"status": status, "chain_message": message, "set_at": now}
    if block is not None:
        values["block"] = block
    async with sessions.begin() as session:
        await session.execute(update(Weights).where(Weights.id == weights_id).values(**values))
        await mark_scored(session, batch_ids, now)


async def mark_weights(sessions: Sessions, weights_id: int, status: WeightsStatus, message: str) -> None:
    """Set a row's status (a failed write, a reveal)."""
    values: dict[str, Any] = {"status": status, "chain_message": message}
    if status == WeightsStatus.REVEALED:
        values["revealed_at"] = datetime.now(UTC)
    async with sessions.begin() as session:
        await session.execute(update(Weights).where(Weights.id == weights_id).values(**values))


async def newest_commit(session: AsyncSession) -> WeightsRecord | None:
    """The newest salted-commit row (by creation), whatever its status."""
    row = await session.scalar(
        select(Weights)
        .where(Weights.mode == WeightsMode.COMMIT)
        .order_by(Weights.created_at.desc(), Weights.id.desc())
        .limit(1)
    )
    return _record(row) if row is not None else None
