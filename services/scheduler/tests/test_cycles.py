"""Epoch and cycle arithmetic (docs/scheduling.md §1): the reference vectors and the tiling properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from horde_scheduler.cycles import (
    PRODUCTION,
    CycleParams,
    cycle_after,
    cycle_before,
    cycle_containing,
    cycle_number,
    epoch_containing,
    epoch_number,
)

NETUID_0 = CycleParams(netuid=0)

blocks = st.integers(min_value=-10_000, max_value=50_000_000)
params = st.builds(
    CycleParams,
    netuid=st.integers(min_value=0, max_value=65535),
    tempo=st.integers(min_value=1, max_value=2000),
)


def test_production_defaults() -> None:
    assert PRODUCTION == CycleParams(netuid=12, tempo=360)
    assert PRODUCTION.epoch_length == 361
    assert PRODUCTION.cycle_length == 722


@pytest.mark.parametrize(
    ("block", "start", "stop"),
    [(25, -2, 359), (359, -2, 359), (360, 359, 720), (720, 359, 720), (721, 720, 1081)],
)
def test_epoch_vectors_netuid_0(block: int, start: int, stop: int) -> None:
    assert epoch_containing(block, NETUID_0) == range(start, stop)


@pytest.mark.parametrize(
    ("block", "start", "stop"),
    [
        (25, -14, 347),
        (347, -14, 347),
        (348, 347, 708),
        (708, 347, 708),
        (709, 708, 1069),
        (1100, 1069, 1430),
        (4_300_000, 4_299_857, 4_300_218),
    ],
)
def test_epoch_vectors_netuid_12(block: int, start: int, stop: int) -> None:
    assert epoch_containing(block) == range(start, stop)


@pytest.mark.parametrize(
    ("block", "start", "stop"),
    [(25, -2, 720), (359, -2, 720), (360, -2, 720), (720, -2, 720), (721, 720, 1442)],
)
def test_cycle_vectors_netuid_0(block: int, start: int, stop: int) -> None:
    assert cycle_containing(block, NETUID_0) == range(start, stop)


@pytest.mark.parametrize(
    ("block", "start", "stop"),
    [
        (25, -14, 708),
        (347, -14, 708),
        (348, -14, 708),
        (708, -14, 708),
        (709, 708, 1430),
        (1100, 708, 1430),
        (1431, 1430, 2152),
        (4_300_000, 4_299_496, 4_300_218),
    ],
)
def test_cycle_vectors_netuid_12(block: int, start: int, stop: int) -> None:
    assert cycle_containing(block) == range(start, stop)


def test_boundary_block_gets_the_range_that_ends_there() -> None:
    # docs/scheduling.md §1.1: start < block <= stop, so 708 is *not* `in` the cycle computed for it.
    cycle = cycle_containing(708)
    assert cycle == range(-14, 708)
    assert 708 not in cycle
    assert cycle_containing(709).start == 708


def test_epoch_and_cycle_numbers() -> None:
    assert [epoch_number(b) for b in (-14, -13, 347, 348, 708, 709)] == [-1, 0, 0, 1, 1, 2]
    assert [cycle_number(b) for b in (-14, 25, 708, 709, 1430, 1431)] == [-1, 0, 0, 1, 1, 2]


def test_neighbouring_cycles() -> None:
    assert cycle_after(range(-14, 708)) == range(708, 1430)
    assert cycle_before(range(708, 1430)) == range(-14, 708)
    assert cycle_after(range(-2, 720), NETUID_0) == range(720, 1442)


def test_for_cycle_length() -> None:
    assert CycleParams.for_cycle_length(722) == PRODUCTION
    short = CycleParams.for_cycle_length(20, netuid=1)
    assert (short.tempo, short.epoch_length, short.cycle_length) == (9, 10, 20)
    for bad in (0, 2, 3, 21):
        with pytest.raises(ValueError, match="even"):
            CycleParams.for_cycle_length(bad)


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="tempo"):
        CycleParams(tempo=0)
    with pytest.raises(ValueError, match="netuid"):
        CycleParams(netuid=-1)


@given(blocks, params)
def test_every_block_has_one_epoch_and_one_cycle(block: int, p: CycleParams) -> None:
    epoch = epoch_containing(block, p)
    cycle = cycle_containing(block, p)
    assert len(epoch) == p.epoch_length
    assert len(cycle) == p.cycle_length
    # The block lies in (start, stop]: exactly one range of each grid satisfies that.
    assert epoch.start < block <= epoch.stop
    assert cycle.start < block <= cycle.stop
    assert cycle.start <= epoch.start and epoch.stop <= cycle.stop
    # Every other block with the same owner maps back to the same range.
    assert cycle_containing(cycle.start + 1, p) == cycle
    assert cycle_containing(cycle.stop, p) == cycle
    assert epoch_containing(epoch.start + 1, p) == epoch


@given(blocks, params)
def test_cycles_tile_the_chain_on_even_epochs(block: int, p: CycleParams) -> None:
    cycle = cycle_containing(block, p)
    nxt = cycle_after(cycle, p)
    assert nxt.start == cycle.stop
    assert cycle_before(nxt, p) == cycle
    assert cycle_containing(cycle.start, p).stop == cycle.start
    # The grid is anchored on the epoch holding block 0, which starts a cycle.
    first = epoch_containing(0, p).start
    assert (cycle.start - first) % p.cycle_length == 0
    assert epoch_number(cycle.start + 1, p) % 2 == 0
    assert epoch_number(cycle.stop, p) % 2 == 1
    assert (
        cycle_number(cycle.start + 1, p)
        == cycle_number(cycle.stop, p)
        == (cycle.start - first) // p.cycle_length
    )


@given(st.integers(min_value=0, max_value=65535))
def test_grid_start_follows_the_netuid(netuid: int) -> None:
    p = CycleParams(netuid=netuid)
    assert cycle_containing(0, p).start == -1 - (netuid + 1) % 361
    assert cycle_containing(1, p).start == -1 - (netuid + 1) % 361
