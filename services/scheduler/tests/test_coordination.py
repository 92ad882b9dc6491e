"""The coordinator's pure rules (`horde_scheduler.coordination`, docs/scheduling.md §8)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from horde_scheduler.coordination import (
    Candidate,
    CoordinatorParams,
    ShardState,
    after_completed,
    after_ready,
    batch_deadlines,
    is_overdue,
    release_deadline_of,
    select_miners,
    should_release,
    split_shards,
)

R, Y, C, F = ShardState.REQUESTED, ShardState.READY, ShardState.COMPLETED, ShardState.FAILED
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def n(uid: int, hotkey: str, ip: str = "10.0.0.1", port: int = 8000, serving: bool = True) -> Candidate:
    return Candidate(uid, hotkey, ip, port, serving)


def test_miners_are_the_serving_neurons_but_ourselves() -> None:
    neurons = [
        n(3, "c"),
        n(0, "own"),
        n(1, "a"),
        n(2, "idle", "0.0.0.0", 0, serving=False),
        n(4, "odd", "0.0.0.0", 8000),  # marked serving but undiallable
        n(5, "noport", port=0),
        n(6, "a"),  # a hotkey twice: the lower uid is kept
    ]
    assert [m.hotkey for m in select_miners(neurons, "own")] == ["a", "c"]


@pytest.mark.parametrize(
    ("count", "size", "expected"),
    [(0, None, []), (0, 2, []), (5, None, [5]), (5, 2, [2, 2, 1]), (4, 2, [2, 2]), (3, 10, [3])],
)
def test_shards(count: int, size: int | None, expected: list[int]) -> None:
    miners = [n(i, f"m{i}") for i in range(count)]
    split = split_shards(miners, size)
    assert [len(s) for s in split] == expected
    assert [m for s in split for m in s] == miners


def test_deadlines() -> None:
    params = CoordinatorParams()
    d = batch_deadlines(T0, params)
    assert (d.accept - T0, d.release - d.accept, d.shard - d.release) == (
        timedelta(seconds=300),
        timedelta(seconds=30),
        timedelta(seconds=410),
    )
    assert release_deadline_of(d.shard, params) == d.release
    assert not is_overdue(d.shard + timedelta(seconds=60), T0 + timedelta(seconds=800), params)
    assert is_overdue(d.shard, d.shard + timedelta(seconds=61), params)
    assert not is_overdue(None, d.shard + timedelta(days=1), params)


def test_shard_transitions() -> None:
    assert [after_ready(s) for s in (R, Y, C, F)] == [Y, Y, C, F]
    assert [after_completed(s, True) for s in (R, Y, C, F)] == [C, C, None, None]
    assert [after_completed(s, False) for s in (R, Y)] == [F, F]


def test_release_rules() -> None:
    later = T0 + timedelta(seconds=1)
    assert should_release([Y, Y], released=False, release_deadline=None, now=T0)
    assert should_release([Y, F], released=False, release_deadline=None, now=T0)  # failed before ready
    assert not should_release([Y, Y], released=True, release_deadline=None, now=T0)
    assert not should_release([Y, R], released=False, release_deadline=later, now=T0)
    assert should_release([Y, R], released=False, release_deadline=later, now=later)
    assert not should_release([C, F], released=False, release_deadline=T0, now=later)  # nobody waits
    assert not should_release([], released=False, release_deadline=T0, now=later)


def test_params_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="shard_size"):
        CoordinatorParams(shard_size=0)
    with pytest.raises(ValueError, match="prepare_s"):
        CoordinatorParams(prepare_s=-1)


def test_settings_reach_the_planner() -> None:
    from horde_common.config import ConfigError, load_settings
    from horde_scheduler.planner import planner_params_for

    params = planner_params_for(
        load_settings(
            SCHEDULER_CYCLE_LENGTH=100,
            SYNTHETIC_JOBS_RUN_OFFSET=4,
            BITTENSOR_APPROXIMATE_BLOCK_DURATION_S=1.5,
            SCHEDULER_PLAN_INTERVAL_S=2.0,
            SYNTHETIC_JOBS_PLANNER_MAX_OVERSLEEP_BLOCKS=5,
            SYNTHETIC_JOBS_PLANNER_WAIT_IN_ADVANCE_BLOCKS=6,
        )
    )
    assert (params.cycle.cycle_length, params.slots.run_offset, params.plan_interval_s) == (100, 4, 2.0)
    assert (params.run.block_time_s, params.run.max_oversleep, params.run.wait_in_advance) == (1.5, 5, 6)
    default = planner_params_for(load_settings())
    assert (default.cycle.cycle_length, default.slots.run_offset, default.run.max_oversleep) == (722, 24, 3)
    for bad in (
        {"SCHEDULER_CYCLE_LENGTH": 21},
        {"SCHEDULER_CYCLE_LENGTH": 2},
        {"SHARD_SIZE": 0},
        {"BITTENSOR_APPROXIMATE_BLOCK_DURATION_S": 0},
        {"SYNTHETIC_JOBS_PLANNER_MAX_OVERSLEEP_BLOCKS": 101},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            load_settings(**bad)
