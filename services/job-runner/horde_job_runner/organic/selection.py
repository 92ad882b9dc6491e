"""Which miner runs an organic job (docs/organic.md, "Running organic jobs: choosing the miner").

V0/V1 requests name their miner. A V2 request leaves the choice to us: round-robin over the miners
whose recent manifest offers online executors of the requested class, in hotkey order. The
round-robin pointer is the miner of the V2 job assigned last, read from `organic_jobs` itself, so
every replica shares it without a table of its own; a transaction-scoped advisory lock makes
replicas take turns between reading the pointer and writing the new assignment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.db.models.organic import OrganicJob
from horde_common.db.models.synthetic import MinerManifest
from horde_job_runner.organic.details import V2_REQUEST

__all__ = [
    "MANIFEST_MAX_AGE",
    "V2_PICK_LOCK_KEY",
    "last_v2_miner",
    "lock_v2_pick",
    "next_miner",
    "pick_v2_miner",
    "v2_candidates",
]

MANIFEST_MAX_AGE: Final = timedelta(hours=4)
"""Manifests older than this do not make a miner a V2 candidate: the original's window, about 20
synthetic batches, so a miner that stopped answering batches drops out within hours."""

V2_PICK_LOCK_KEY: Final = 0x6F72_6761_6E69_6332  # "organic2"
"""Advisory lock held from reading the pointer to writing the chosen miner (one pick at a time)."""


V2_ASSIGNED: Final = text(
    f"(organic_jobs.request ->> 'message_type') = '{V2_REQUEST}' AND organic_jobs.miner_hotkey <> ''"
)
"""V2 rows with a miner, spelled as the predicate of `ix_organic_jobs_v2_assigned` (migration 0005)
with constants, not bound parameters: the planner proves a partial index applies only from those."""


def next_miner(candidates: Iterable[str], last: str | None, blacklist: Iterable[str] = ()) -> str | None:
    """The first candidate (in hotkey order) after `last`, wrapping to the first; None if none.

    Blacklisted hotkeys are never candidates. `last` need not be a candidate any more: the pick is
    by order, not by position, so a miner leaving the set does not reset the rotation.
    """
    banned = set(blacklist)
    ordered = sorted({c for c in candidates if c not in banned})
    if not ordered:
        return None
    if last is not None:
        for hotkey in ordered:
            if hotkey > last:
                return hotkey
    return ordered[0]


async def v2_candidates(session: AsyncSession, executor_class: str, now: datetime) -> Sequence[str]:
    """Hotkeys with a manifest of `executor_class` with online executors in the last 4 hours."""
    rows = await session.scalars(
        select(MinerManifest.miner_hotkey)
        .where(
            MinerManifest.executor_class == executor_class,
            MinerManifest.online_executor_count > 0,
            MinerManifest.created_at >= now - MANIFEST_MAX_AGE,
        )
        .distinct()
        .order_by(MinerManifest.miner_hotkey)
    )
    return list(rows)


async def last_v2_miner(session: AsyncSession) -> str | None:
    """The round-robin pointer: the miner of the V2 job assigned last.

    An assignment resets the row's `created_at` to the time of the assignment (the original created
    the row only then), so the newest `created_at` among V2 rows with a miner is the last pick.
    """
    result: str | None = await session.scalar(
        select(OrganicJob.miner_hotkey)
        .where(V2_ASSIGNED)
        .order_by(OrganicJob.created_at.desc(), OrganicJob.id.desc())
        .limit(1)
    )
    return result


async def lock_v2_pick(session: AsyncSession) -> None:
    """Take the pick lock for the rest of the caller's transaction."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": V2_PICK_LOCK_KEY})


async def pick_v2_miner(
    session: AsyncSession, executor_class: str, now: datetime, blacklist: Iterable[str] = ()
) -> str | None:
    """Lock, then choose the next V2 miner. The caller writes the choice to the job's row in the
    same transaction (that write is what moves the pointer)."""
    await lock_v2_pick(session)
    return next_miner(
        await v2_candidates(session, executor_class, now), await last_v2_miner(session), blacklist
    )
