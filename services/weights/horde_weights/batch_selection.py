"""Which batch a weight-setting run scores: exactly one per run, the newest eligible one.

docs/scoring.md §1.5. Pure: the caller loads the unscored batches as `BatchDescriptor`s, asks
`select_batch`, then marks `to_mark_scored` (and, once scored, `to_score`) as scored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

__all__ = ["MAX_BATCH_AGE", "BatchDescriptor", "BatchSelection", "is_eligible", "select_batch"]

# A batch started longer ago than this is never scored: weights reflect the last cycle, and a batch
# from days ago (the validator was down, say) says nothing about the miners now. One day is the
# November 2024 validator's window, several cycles (a cycle is ~2.4 h) wide.
MAX_BATCH_AGE: Final = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class BatchDescriptor:
    """What selection needs of a `synthetic_job_batches` row and its cycle.

    `started_at` is None for a batch that never ran (missed); `cycle_stop` (the cycle's exclusive
    end block) is None for a batch without a cycle (an unstaggered debug batch); `completed` is
    False while the batch's shards are still running or writing. Datetimes are timezone-aware, like
    the stored columns.
    """

    batch_id: int
    started_at: datetime | None
    cycle_stop: int | None
    scored: bool = False
    completed: bool = True


@dataclass(frozen=True, slots=True)
class BatchSelection:
    """The outcome: the batch to score (None: nothing to do) and the older eligible batches to mark
    scored without scoring them (oldest first). With `to_score` None, `to_mark_scored` is empty."""

    to_score: int | None
    to_mark_scored: tuple[int, ...] = ()


def is_eligible(
    batch: BatchDescriptor, *, current_block: int, now: datetime, max_age: timedelta = MAX_BATCH_AGE
) -> bool:
    """Unscored, completed, started within `max_age` of `now` (inclusive), and its cycle over: the
    cycle's stop block is below `current_block` (so the batch of the cycle still running is never
    taken). Completed: the reference did not wait for it, and a batch still running when its cycle
    ended (short cycles, a slow batch) was scored from the rows written so far, every miner at 0 —
    our fault, counted against the miners. Waiting for `completed_at` fixes that (docs/scoring.md §1.5)."""
    return (
        not batch.scored
        and batch.completed
        and batch.started_at is not None
        and batch.started_at >= now - max_age
        and batch.cycle_stop is not None
        and batch.cycle_stop < current_block
    )


def select_batch(
    batches: Iterable[BatchDescriptor],
    *,
    current_block: int,
    now: datetime,
    max_age: timedelta = MAX_BATCH_AGE,
) -> BatchSelection:
    """Pick the newest eligible batch (latest `started_at`, ties broken by the higher id) to score;
    every older eligible batch is to be marked scored unused, so one run scores exactly one batch
    and a backlog (after an outage, say) is dropped rather than scored later. Ineligible batches are
    left alone: a batch of the running cycle becomes eligible when the cycle ends."""
    eligible = sorted(
        (b for b in batches if is_eligible(b, current_block=current_block, now=now, max_age=max_age)),
        key=lambda b: (b.started_at, b.batch_id),
    )
    if not eligible:
        return BatchSelection(to_score=None)
    *older, newest = eligible
    return BatchSelection(to_score=newest.batch_id, to_mark_scored=tuple(b.batch_id for b in older))
