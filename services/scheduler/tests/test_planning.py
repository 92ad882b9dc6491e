"""The planner's pure decisions (docs/scheduling.md §7): parameters, candidate cycles, list snapshot."""

from __future__ import annotations

import pytest

from horde_scheduler.cycles import CycleParams, cycle_containing
from horde_scheduler.planning import (
    LOCALNET_DUE_MARGIN_BLOCKS,
    PlannerParams,
    cycles_to_plan,
    list_snapshot_block,
    missed_before,
    planner_params_from,
)
from horde_scheduler.slots import RunParams, SlotParams, due_window


def test_production_defaults() -> None:
    p = planner_params_from(netuid=12)
    assert p == PlannerParams()
    assert (p.cycle.cycle_length, p.slots.run_offset, p.run.max_oversleep, p.run.wait_in_advance) == (
        722,
        24,
        3,
        3,
    )
    assert (p.run.block_time_s, p.plan_interval_s) == (12.0, 60.0)


def test_localnet_runs_a_cycle_in_minutes() -> None:
    p = planner_params_from(netuid=12, localnet=True)
    assert p.cycle.cycle_length * p.run.block_time_s == pytest.approx(144.4)
    assert p.run.max_oversleep == p.run.wait_in_advance == LOCALNET_DUE_MARGIN_BLOCKS
    # The due window spans more than one plan interval, so a runner checking that often hits it.
    assert len(due_window(0, p.run)) * p.run.block_time_s > p.plan_interval_s


def test_explicit_values_win() -> None:
    p = planner_params_from(
        netuid=3,
        localnet=True,
        cycle_length=600,
        run_offset=10,
        block_time_s=0.1,
        plan_interval_s=0.5,
        max_oversleep_blocks=4,
        wait_in_advance_blocks=2,
        min_stake=1.0,
    )
    assert (p.netuid, p.cycle, p.slots.run_offset, p.slots.min_stake) == (3, CycleParams(3, 299), 10, 1.0)
    assert (p.run.block_time_s, p.run.max_oversleep, p.run.wait_in_advance, p.plan_interval_s) == (
        0.1,
        4,
        2,
        0.5,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cycle_length": 7},  # odd
        {"cycle_length": 40, "run_offset": 40},  # offset not inside the cycle
        {"cycle_length": 40, "run_offset": 20},  # 20 blocks left for 24 validators
        {"block_time_s": 0.0},
        {"plan_interval_s": -1.0},
        {"max_oversleep_blocks": -1},
    ],
)
def test_nonsense_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        planner_params_from(netuid=12, **kwargs)  # type: ignore[arg-type]


def test_grid_and_planner_netuid_agree() -> None:
    with pytest.raises(ValueError, match="netuid"):
        PlannerParams(netuid=12, cycle=CycleParams(netuid=0))
    small = PlannerParams(
        cycle=CycleParams.for_cycle_length(40), slots=SlotParams(run_offset=4, max_validators=36)
    )
    assert small.cycle.cycle_length == 40


def test_current_cycle_only_inside_it() -> None:
    for head in (708 + 1, 1000, 1429):
        assert cycles_to_plan(head, CycleParams()) == [range(708, 1430)]


def test_boundary_block_adds_the_next_cycle() -> None:
    # Block 1430 belongs to [708, 1430) (docs/scheduling.md §1.1); the next cycle starts at it.
    assert cycle_containing(1430) == range(708, 1430)
    assert cycles_to_plan(1430, CycleParams()) == [range(708, 1430), range(1430, 2152)]
    assert cycles_to_plan(1431, CycleParams()) == [range(1430, 2152)]


@pytest.mark.parametrize(
    ("before", "after", "chosen"),
    [
        (None, None, None),  # nothing stored
        (95, None, None),  # the sync has not reached the start: wait
        (100, None, 100),  # the snapshot at the start itself
        (100, 101, 100),
        (98, 102, 98),  # a tie goes to the earlier one
        (97, 102, 102),
        (None, 140, 140),  # first start mid-cycle: the oldest snapshot is the best there is
        (10, 103, 103),
    ],
)
def test_list_snapshot_choice(before: int | None, after: int | None, chosen: int | None) -> None:
    assert list_snapshot_block(100, before, after) == chosen


def test_missed_means_past_the_oversleep_margin() -> None:
    run = RunParams(max_oversleep=3)
    assert missed_before(1503, run) == 1500
    assert 1500 in due_window(1503, run) and 1499 not in due_window(1503, run)
