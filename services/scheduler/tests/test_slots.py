"""Validator list, slot choice and the runner's decision (docs/scheduling.md §2-§4)."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from horde_scheduler.cycles import CycleParams, cycle_containing
from horde_scheduler.slots import (
    BAC_VALIDATOR_HOTKEY,
    NeuronStake,
    NotAValidatorError,
    RunAction,
    RunParams,
    RunPlan,
    ScheduleError,
    SlotParams,
    due_window,
    max_polls,
    plan_run,
    seed_block,
    select_validators,
    shuffled,
    slot_block,
    when_to_run,
)

# The block hash the reference's scheduling test used as the seed (docs/scheduling.md §5).
EXAMPLE_SEED = "0xed0050a68f7027abdf10a5e4bd7951c00d886ddbb83bed5b3236ed642082b464"


def example_neurons() -> list[NeuronStake]:
    """Ten validators at uids 0, 3, ..., 27 plus ours at uid 17; stake (uid + 1) * 1001 TAO."""
    others = [NeuronStake(uid=3 * i, hotkey=f"v{3 * i}", stake=(3 * i + 1) * 1001.0) for i in range(10)]
    return [*others, NeuronStake(uid=17, hotkey="own", stake=18 * 1001.0)]


# --- §3 step 5: slot arithmetic --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cycle", "offset", "total", "index", "block"),
    [
        (range(100, 151), 0, 4, 2, 125),
        (range(100, 151), 0, 2, 0, 100),
        (range(100, 151), 0, 2, 1, 125),
        (range(100, 201), 10, 3, 0, 110),
        (range(100, 201), 10, 3, 1, 140),
        (range(100, 201), 10, 3, 2, 170),
    ],
)
def test_slot_block_vectors(cycle: range, offset: int, total: int, index: int, block: int) -> None:
    assert slot_block(cycle, total=total, index=index, offset=offset) == block


def test_production_slots_with_24_validators() -> None:
    cycle = range(-14, 708)
    offsets = [slot_block(cycle, total=24, index=i, offset=24) - cycle.start for i in range(24)]
    assert offsets[:3] == [24, 53, 82]
    assert offsets[-1] == 692


def test_slot_block_keeps_float_rounding() -> None:
    # (30 / 22) * 11 is 14.999... in floating point, 15 exactly; the other validators get 14.
    assert slot_block(range(0, 30), total=22, index=11) == 14


@pytest.mark.parametrize(("total", "index", "offset"), [(0, 0, 0), (3, 3, 0), (3, -1, 0), (3, 0, 51)])
def test_slot_block_rejects_nonsense(total: int, index: int, offset: int) -> None:
    with pytest.raises(ValueError):
        slot_block(range(100, 151), total=total, index=index, offset=offset)


# --- §2: the validator list ------------------------------------------------------------------------


def test_list_orders_by_stake_and_keeps_uid_order_on_ties() -> None:
    neurons = [
        NeuronStake(uid=5, hotkey="e", stake=2000.0),
        NeuronStake(uid=1, hotkey="a", stake=5000.0),
        NeuronStake(uid=3, hotkey="c", stake=2000.0),
        NeuronStake(uid=2, hotkey="b", stake=999.99),
        NeuronStake(uid=4, hotkey="d", stake=1000.0),
    ]
    assert [n.hotkey for n in select_validators(neurons)] == ["a", "c", "e", "d"]


def test_bac_is_always_listed_and_first() -> None:
    neurons = [
        NeuronStake(uid=0, hotkey="big", stake=1e6),
        NeuronStake(uid=1, hotkey=BAC_VALIDATOR_HOTKEY, stake=0.0),
        *[NeuronStake(uid=2 + i, hotkey=f"h{i}", stake=5000.0 + i) for i in range(30)],
    ]
    listed = select_validators(neurons)
    assert len(listed) == 24
    assert [n.hotkey for n in listed[:3]] == [BAC_VALIDATOR_HOTKEY, "big", "h29"]
    assert listed[-1].hotkey == "h8"


def test_list_params_are_parameters() -> None:
    neurons = [NeuronStake(uid=i, hotkey=f"h{i}", stake=float(i)) for i in range(6)]
    params = SlotParams(min_stake=2.0, max_validators=3, always_included=frozenset({"h0"}))
    assert [n.hotkey for n in select_validators(neurons, params)] == ["h0", "h5", "h4"]


def test_the_example_list() -> None:
    listed = [n.hotkey for n in select_validators(example_neurons())]
    assert listed == ["v27", "v24", "v21", "v18", "own", "v15", "v12", "v9", "v6", "v3", "v0"]


# --- §3: when_to_run -------------------------------------------------------------------------------


def test_eleven_validators_at_block_140_run_at_390() -> None:
    cycle = cycle_containing(140)
    assert cycle == range(-14, 708)
    assert seed_block(cycle) == -17
    hotkeys = [n.hotkey for n in select_validators(example_neurons())]
    slot = when_to_run(cycle, hotkeys, "own", EXAMPLE_SEED)
    assert (slot.index, slot.block, slot.validator_count, slot.seed) == (6, 390, 11, EXAMPLE_SEED)
    assert slot.block == -14 + 24 + (698 * 6) // 11


def test_not_on_the_list_raises() -> None:
    hotkeys = [f"v{i}" for i in range(10)]
    with pytest.raises(NotAValidatorError):
        when_to_run(range(-14, 708), hotkeys, "own", EXAMPLE_SEED)
    assert issubclass(NotAValidatorError, ScheduleError)


def test_shuffle_is_cpython_string_seeding() -> None:
    """The recipe docs/scheduling.md §3 gives for other languages reproduces `random.Random(str)`."""
    raw = EXAMPLE_SEED.encode()
    as_int = int.from_bytes(raw + hashlib.sha512(raw).digest(), "big")
    rng = random.Random(as_int)  # init_by_array over the 32-bit words, least significant first
    order = [f"v{i}" for i in range(11)]
    for i in range(len(order) - 1, 0, -1):
        k = (i + 1).bit_length()
        j = rng.getrandbits(k)  # the top k bits of one MT19937 output
        while j >= i + 1:
            j = rng.getrandbits(k)
        order[i], order[j] = order[j], order[i]
    assert order == shuffled([f"v{i}" for i in range(11)], EXAMPLE_SEED)
    # Pinned so a change in the generator cannot pass unnoticed.
    assert shuffled([f"v{i}" for i in range(11)], EXAMPLE_SEED)[6] == "v4"


def test_seed_lag_is_a_parameter() -> None:
    assert seed_block(range(708, 1430), SlotParams(seed_lag=5)) == 703


hotkey_lists = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=24, unique=True)
seeds = st.text(min_size=1, max_size=66)


@given(hotkey_lists, seeds, st.integers(min_value=-10_000, max_value=10_000_000))
def test_slots_are_unique_and_inside_the_cycle(hotkeys: list[str], seed: str, block: int) -> None:
    cycle = cycle_containing(block)
    slots = [when_to_run(cycle, hotkeys, h, seed) for h in hotkeys]
    assert sorted(s.index for s in slots) == list(range(len(hotkeys)))
    assert len({s.block for s in slots}) == len(hotkeys)
    assert all(cycle.start + 24 <= s.block < cycle.stop for s in slots)
    # Slots come in shuffled order, evenly spaced: later index, later block.
    by_index = sorted(slots, key=lambda s: s.index)
    assert [s.block for s in by_index] == sorted(s.block for s in slots)


@given(hotkey_lists, seeds, st.data())
def test_when_to_run_is_deterministic(hotkeys: list[str], seed: str, data: st.DataObject) -> None:
    own = data.draw(st.sampled_from(hotkeys))
    cycle = range(708, 1430)
    first = when_to_run(cycle, hotkeys, own, seed)
    random.seed(12345)  # the global generator must not matter
    assert when_to_run(cycle, list(hotkeys), own, seed) == first
    assert shuffled(hotkeys, seed) == shuffled(tuple(hotkeys), seed)


@given(
    st.integers(min_value=4, max_value=400).map(lambda n: n - n % 2),
    st.integers(min_value=0, max_value=30),
    st.integers(min_value=1, max_value=24),
    st.integers(min_value=-5000, max_value=5000),
)
def test_short_cycles_keep_slots_apart(length: int, offset: int, total: int, block: int) -> None:
    """Localnet's short cycles: slots stay unique and inside while there is a block per validator."""
    cycle = cycle_containing(block, CycleParams.for_cycle_length(length))
    assume(offset < length and length - offset >= total)
    starts = [slot_block(cycle, total=total, index=i, offset=offset) for i in range(total)]
    assert len(set(starts)) == total
    assert all(cycle.start + offset <= s < cycle.stop for s in starts)


@given(
    st.lists(
        st.builds(
            NeuronStake,
            uid=st.integers(min_value=0, max_value=300),
            hotkey=st.sampled_from(["a", "b", "c", "d", BAC_VALIDATOR_HOTKEY])
            | st.text(min_size=1, max_size=4),
            stake=st.floats(min_value=0, max_value=1e7),
        ),
        max_size=60,
        unique_by=lambda n: n.uid,
    ),
    st.randoms(use_true_random=False),
)
def test_list_rule_properties(neurons: list[NeuronStake], rnd: random.Random) -> None:
    listed = select_validators(neurons)
    assert len(listed) <= 24
    assert all(n.stake >= 1000 or n.hotkey == BAC_VALIDATOR_HOTKEY for n in listed)
    keys = [(n.hotkey == BAC_VALIDATOR_HOTKEY, n.stake) for n in listed]
    assert keys == sorted(keys, reverse=True)
    left_out = [
        n for n in neurons if n not in listed and (n.stake >= 1000 or n.hotkey == BAC_VALIDATOR_HOTKEY)
    ]
    assert not left_out or len(listed) == 24
    shuffled_input = list(neurons)
    rnd.shuffle(shuffled_input)
    assert select_validators(shuffled_input) == listed


# --- §4: running the batch -------------------------------------------------------------------------


def test_due_window_and_polls() -> None:
    assert due_window(100) == range(97, 104)
    assert max_polls(1) == 6
    assert max_polls(3) == 18
    assert max_polls(1, RunParams(block_time_s=1.0, poll_interval_s=0.5)) == 4


@pytest.mark.parametrize(
    ("target", "plan"),
    [
        (None, None),
        (97, RunPlan(RunAction.RUN_OVERSLEPT, 97)),
        (99, RunPlan(RunAction.RUN_OVERSLEPT, 99)),
        (100, RunPlan(RunAction.RUN_NOW, 100)),
        (101, RunPlan(RunAction.WAIT, 101, 6)),
        (103, RunPlan(RunAction.WAIT, 103, 18)),
    ],
)
def test_plan_run_at_block_100(target: int | None, plan: RunPlan | None) -> None:
    assert plan_run(100, target) == plan


@pytest.mark.parametrize("target", [96, 104])
def test_plan_run_refuses_blocks_outside_the_window(target: int) -> None:
    assert target not in due_window(100)
    with pytest.raises(ValueError, match="outside"):
        plan_run(100, target)


def test_dont_stagger_runs_an_unscheduled_batch() -> None:
    assert plan_run(100, None, dont_stagger=True) == RunPlan(RunAction.RUN_UNSCHEDULED)
    assert plan_run(100, 150, dont_stagger=True) == RunPlan(RunAction.RUN_UNSCHEDULED)
