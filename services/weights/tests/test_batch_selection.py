"""One batch scored per weight-setting run: the newest eligible one (docs/scoring.md §1.5)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from horde_weights.batch_selection import (
    MAX_BATCH_AGE,
    BatchDescriptor,
    BatchSelection,
    is_eligible,
    select_batch,
)

NOW = datetime(2024, 11, 26, 12, 0, tzinfo=UTC)


def started(minutes_ago: float) -> datetime:
    return NOW - timedelta(minutes=minutes_ago)


def test_nothing_to_score() -> None:
    assert select_batch([], current_block=361, now=NOW) == BatchSelection(to_score=None, to_mark_scored=())


def test_the_first_cycles_batch_after_its_end() -> None:
    """A batch of cycle [0, 722) is eligible from block 723 on, not at 722 (the stop is exclusive)."""
    batch = BatchDescriptor(1, started(60), cycle_stop=722)
    assert select_batch([batch], current_block=722, now=NOW).to_score is None
    assert select_batch([batch], current_block=723, now=NOW) == BatchSelection(1, ())


def test_newest_eligible_is_scored_and_older_ones_are_marked() -> None:
    batches = [
        BatchDescriptor(3, started(200), cycle_stop=1444),
        BatchDescriptor(1, started(400), cycle_stop=722),
        BatchDescriptor(2, started(300), cycle_stop=722),
    ]
    assert select_batch(batches, current_block=1500, now=NOW) == BatchSelection(3, (1, 2))


def test_ineligible_batches_are_left_alone() -> None:
    batches = [
        BatchDescriptor(1, started(100), cycle_stop=722),  # the eligible one
        BatchDescriptor(2, started(10), cycle_stop=1444),  # its cycle is still running
        BatchDescriptor(3, None, cycle_stop=722),  # never started (missed)
        BatchDescriptor(4, started(5), cycle_stop=None),  # no cycle (debug batch)
        BatchDescriptor(5, started(1), cycle_stop=722, scored=True),  # already scored
        BatchDescriptor(6, NOW - MAX_BATCH_AGE - timedelta(seconds=1), cycle_stop=722),  # too old
    ]
    assert select_batch(batches, current_block=1000, now=NOW) == BatchSelection(1, ())


def test_age_limit_is_inclusive() -> None:
    batch = BatchDescriptor(1, NOW - MAX_BATCH_AGE, cycle_stop=722)
    assert is_eligible(batch, current_block=723, now=NOW)


def test_ties_on_start_time_go_to_the_higher_id() -> None:
    batches = [BatchDescriptor(7, started(10), 722), BatchDescriptor(4, started(10), 722)]
    assert select_batch(batches, current_block=723, now=NOW) == BatchSelection(7, (4,))


DESCRIPTORS = st.lists(
    st.builds(
        BatchDescriptor,
        batch_id=st.integers(min_value=1, max_value=10_000),
        started_at=st.one_of(st.none(), st.integers(0, 3000).map(lambda m: started(m))),
        cycle_stop=st.one_of(st.none(), st.integers(0, 3000)),
        scored=st.booleans(),
    ),
    max_size=20,
    unique_by=lambda b: b.batch_id,
)


@given(batches=DESCRIPTORS, current_block=st.integers(0, 3000), rnd=st.randoms())
def test_exactly_one_scored_the_newest_and_the_rest_marked(
    batches: list[BatchDescriptor], current_block: int, rnd: random.Random
) -> None:
    selection = select_batch(batches, current_block=current_block, now=NOW)
    eligible = [b for b in batches if is_eligible(b, current_block=current_block, now=NOW)]
    if not eligible:
        assert selection == BatchSelection(None, ())
        return
    chosen = next(b for b in eligible if b.batch_id == selection.to_score)
    assert all(
        (b.started_at, b.batch_id) <= (chosen.started_at, chosen.batch_id)  # type: ignore[operator]
        for b in eligible
    )
    assert sorted(selection.to_mark_scored) == sorted(b.batch_id for b in eligible if b is not chosen)
    shuffled = list(batches)
    rnd.shuffle(shuffled)
    assert select_batch(shuffled, current_block=current_block, now=NOW) == selection


def test_a_batch_still_running_is_never_scored() -> None:
    """Its cycle may be over (a short cycle, a slow batch): the rows written so far would score every
    miner 0, our fault counted against them. It waits until it completes."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    running = BatchDescriptor(batch_id=7, started_at=now, cycle_stop=100, completed=False)
    done = BatchDescriptor(batch_id=6, started_at=now, cycle_stop=100)
    assert select_batch([running], current_block=200, now=now) == BatchSelection(to_score=None)
    assert select_batch([running, done], current_block=200, now=now).to_score == 6
