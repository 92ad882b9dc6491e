"""Who validates in a cycle, and at which block each validator starts its batch (`docs/scheduling.md §2-§4`).

Pure functions: the caller reads the metagraph at `cycle.start` and the block hash at `seed_block(...)`
and passes them in. Every validator runs the same computation on the same chain data, so they all
arrive at the same order and their batches do not overlap, without talking to each other.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

# The subnet owner's validator: always on the list and always ranked first, whatever its stake, so
# miners never lock it out (docs/scheduling.md §2).
BAC_VALIDATOR_HOTKEY = "5HBVrFGy6oYhhh71m9fFGYD7zbKyAeHnWN8i8s9fJTBMCtEE"
# Stake (TAO) a neuron needs to count as a validator; miners use the same floor to decide whom to
# serve, so a lower value here would schedule validators the miners refuse (docs/scheduling.md §2).
MIN_STAKE_TAO = 1000.0
# Miners accept at most this many validators; the slots divide a cycle among them (docs/scheduling.md §2).
MAX_VALIDATORS = 24
# Blocks at the start of every cycle before the first slot (the SYNTHETIC_JOBS_RUN_OFFSET default). All
# validators must use the same value, or their slots interleave badly instead of being evenly spaced
# (docs/scheduling.md §3).
RUN_OFFSET_BLOCKS = 24
# The seed is the hash of the block this far before the cycle start: a block every validator's node
# already has final, so all hash the same one (DYNAMIC_BLOCK_FINALIZATION_NUMBER default;
# docs/scheduling.md §3).
SEED_LAG_BLOCKS = 3
# Run a due batch up to this many blocks late, or wait for it up to this many blocks ahead
# (the DYNAMIC_SYNTHETIC_JOBS_PLANNER_* defaults; docs/scheduling.md §4).
MAX_OVERSLEEP_BLOCKS = 3
WAIT_IN_ADVANCE_BLOCKS = 3
# Target block time; waiting polls for twice the expected time before giving up (docs/scheduling.md §4).
BLOCK_TIME_S = 12.0
# How often to re-read the chain while waiting (the DYNAMIC_SYNTHETIC_JOBS_PLANNER_POLL_INTERVAL default).
POLL_INTERVAL_S = 4.0


class ScheduleError(Exception):
    """This validator cannot schedule a batch for the cycle; no batch is created."""


class NotAValidatorError(ScheduleError):
    """Our hotkey is not on the cycle's validator list (docs/scheduling.md §3 step 1)."""


@dataclass(frozen=True, slots=True)
class NeuronStake:
    """The part of a metagraph neuron the validator list needs. `stake` is in TAO."""

    uid: int
    hotkey: str
    stake: float


@dataclass(frozen=True, slots=True)
class SlotParams:
    """Settings of the validator list and the slot choice; defaults are production's."""

    run_offset: int = RUN_OFFSET_BLOCKS
    seed_lag: int = SEED_LAG_BLOCKS
    max_validators: int = MAX_VALIDATORS
    min_stake: float = MIN_STAKE_TAO
    always_included: frozenset[str] = frozenset({BAC_VALIDATOR_HOTKEY})

    def __post_init__(self) -> None:
        if self.run_offset < 0 or self.seed_lag < 0:
            raise ValueError("run_offset and seed_lag must be >= 0")
        if self.max_validators < 1:
            raise ValueError(f"max_validators must be >= 1, got {self.max_validators}")


@dataclass(frozen=True, slots=True)
class Slot:
    """Where this validator runs in the cycle; `seed`, `index` and `block` are the scheduling event's data."""

    cycle: range
    seed: str
    index: int
    block: int
    validator_count: int


def select_validators(neurons: Iterable[NeuronStake], params: SlotParams | None = None) -> list[NeuronStake]:
    """The cycle's validator list, in list order (docs/scheduling.md §2).

    Keep neurons with stake >= `min_stake` plus the always-included hotkeys, rank them always-included
    first, then by stake, both descending, and keep the first `max_validators`. Equal keys keep uid
    order (the metagraph's order, which the reference's stable sort preserved).
    """
    p = params or SlotParams()
    eligible = [n for n in sorted(neurons, key=lambda n: n.uid) if _eligible(n, p)]
    ranked = sorted(eligible, key=lambda n: (n.hotkey in p.always_included, n.stake), reverse=True)
    return ranked[: p.max_validators]


def _eligible(neuron: NeuronStake, params: SlotParams) -> bool:
    return neuron.hotkey in params.always_included or neuron.stake >= params.min_stake


def seed_block(cycle: range, params: SlotParams | None = None) -> int:
    """The block whose hash seeds the cycle's shuffle (docs/scheduling.md §3 step 2)."""
    return cycle.start - (params or SlotParams()).seed_lag


def shuffled(hotkeys: Sequence[str], seed: str) -> list[str]:
    """`hotkeys` in the cycle's random order (docs/scheduling.md §3 step 3).

    Must be CPython's `random.Random(seed).shuffle` on the string seed (SHA-512 string seeding, MT19937,
    Fisher-Yates): that is what the other validators run, and any other generator breaks agreement.
    """
    order = list(hotkeys)
    random.Random(seed).shuffle(order)
    return order


def slot_block(cycle: range, total: int, index: int, offset: int = 0) -> int:
    """Start block of slot `index` of `total` even slots after `offset` (docs/scheduling.md §3 step 5).

    Kept in floating point exactly as `start + offset + floor((length - offset) / total * index)`:
    exact rational arithmetic rounds differently for some lengths, and every validator must agree.
    """
    if total < 1 or not 0 <= index < total:
        raise ValueError(f"need 0 <= index < total, got index={index} total={total}")
    if not 0 <= offset < len(cycle):
        raise ValueError(f"offset {offset} must be inside the cycle of {len(cycle)} blocks")
    spacing = (cycle.stop - cycle.start - offset) / total
    return cycle.start + offset + math.floor(spacing * index)


def when_to_run(
    cycle: range,
    validator_hotkeys: Sequence[str],
    own_hotkey: str,
    seed: str,
    params: SlotParams | None = None,
) -> Slot:
    """This validator's start block in `cycle` (docs/scheduling.md §3).

    `validator_hotkeys` is the list from `select_validators` on the metagraph at `cycle.start`, in
    list order; `seed` is the `0x…` hash string of block `seed_block(cycle)`. Raises
    `NotAValidatorError` when `own_hotkey` is not on the list: such a validator runs no batch.
    """
    p = params or SlotParams()
    if own_hotkey not in validator_hotkeys:
        raise NotAValidatorError(f"{own_hotkey} is not among the {len(validator_hotkeys)} validators")
    index = shuffled(validator_hotkeys, seed).index(own_hotkey)
    total = len(validator_hotkeys)
    block = slot_block(cycle, total=total, index=index, offset=p.run_offset)
    return Slot(cycle=cycle, seed=seed, index=index, block=block, validator_count=total)


class RunAction(Enum):
    """What the runner does with the batch due now (docs/scheduling.md §4)."""

    RUN_UNSCHEDULED = "run_unscheduled"  # stagger switched off: a batch with no block or cycle, now
    RUN_OVERSLEPT = "run_overslept"  # the target block has passed (within the margin): warn, run now
    RUN_NOW = "run_now"  # the chain is at the target block
    WAIT = "wait"  # poll the chain until the target block, at most `max_polls` times


@dataclass(frozen=True, slots=True)
class RunPlan:
    """The runner's decision; `max_polls` is set only for `WAIT`."""

    action: RunAction
    target_block: int | None = None
    max_polls: int = 0


@dataclass(frozen=True, slots=True)
class RunParams:
    """The runner's timing settings; defaults are the dynamic-config defaults."""

    max_oversleep: int = MAX_OVERSLEEP_BLOCKS
    wait_in_advance: int = WAIT_IN_ADVANCE_BLOCKS
    block_time_s: float = BLOCK_TIME_S
    poll_interval_s: float = POLL_INTERVAL_S


def due_window(current_block: int, params: RunParams | None = None) -> range:
    """Blocks of un-started batches the runner may pick at `current_block`, earliest first
    (docs/scheduling.md §4): from `max_oversleep` behind to `wait_in_advance` ahead, both inclusive."""
    p = params or RunParams()
    return range(current_block - p.max_oversleep, current_block + p.wait_in_advance + 1)


def max_polls(blocks_to_wait: int, params: RunParams | None = None) -> int:
    """Polls allowed while waiting: twice the expected time of `blocks_to_wait` blocks, at the poll
    interval, rounded up (docs/scheduling.md §4). One block ahead gives 6 polls with the defaults."""
    p = params or RunParams()
    return max(0, math.ceil(blocks_to_wait * p.block_time_s * 2 / p.poll_interval_s))


def plan_run(
    current_block: int,
    target_block: int | None,
    *,
    dont_stagger: bool = False,
    params: RunParams | None = None,
) -> RunPlan | None:
    """Decide what the runner does now (docs/scheduling.md §4).

    `target_block` is the block of the earliest un-started batch in `due_window(current_block)`, or
    None if there is none. `dont_stagger` is the debug switch that ignores the schedule and runs an
    unscheduled batch every time (such batches have no cycle, so they are never scored). Returns None
    when there is nothing to do.
    """
    if dont_stagger:
        return RunPlan(RunAction.RUN_UNSCHEDULED)
    if target_block is None:
        return None
    if target_block not in due_window(current_block, params):
        raise ValueError(f"block {target_block} is outside the due window at block {current_block}")
    if target_block < current_block:
        return RunPlan(RunAction.RUN_OVERSLEPT, target_block)
    if target_block == current_block:
        return RunPlan(RunAction.RUN_NOW, target_block)
    return RunPlan(RunAction.WAIT, target_block, max_polls(target_block - current_block, params))
