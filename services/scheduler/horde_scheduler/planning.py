"""Pure decisions of the batch planner (`docs/scheduling.md §7`): no database, chain or clock.

`planner.py` does the I/O and asks these functions what to do: which cycles to plan at a head
block, which stored metagraph snapshot stands for a cycle's validator list, which batches count
as missed, and what the runner does with the batch due now. Every rule is therefore a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from horde_scheduler.cycles import CycleParams, cycle_after, cycle_containing
from horde_scheduler.slots import (
    BLOCK_TIME_S,
    MAX_OVERSLEEP_BLOCKS,
    POLL_INTERVAL_S,
    RUN_OFFSET_BLOCKS,
    WAIT_IN_ADVANCE_BLOCKS,
    RunAction,
    RunParams,
    RunPlan,
    SlotParams,
)

# The reference planned once a minute; a slot is at least a block (12 s) after the cycle start
# plus the 24-block offset, so a minute's delay never costs a slot (docs/scheduling.md §7.1).
PLAN_INTERVAL_S = 60.0
# Chain calls of the planner: one short read each, so 20 s covers a slow public node; three tries
# (pauses of 1 s and 2 s) as the metagraph sync does (docs/scheduling.md §6.4).
CALL_TIMEOUT_S = 20.0
RETRY_DELAYS_S = (1.0, 2.0)
# After a failed iteration wait a block and double up to 120 s, as the metagraph sync does.
BACKOFF_FIRST_S = 12.0
BACKOFF_MAX_S = 120.0

# Localnet: 0.2 s blocks with the production tempo give a 722-block cycle of about 2.4 minutes.
LOCALNET_BLOCK_TIME_S = 0.2
# Check the head every second: five blocks, well inside a slot of ~29 blocks.
LOCALNET_PLAN_INTERVAL_S = 1.0
# A waiting runner re-reads the head every 2.5 blocks: it starts at most half a second late.
LOCALNET_POLL_INTERVAL_S = 0.5
# With 0.2 s blocks a 3-block window is 0.6 s, shorter than one check of the chain; 10 blocks (2 s)
# lets a runner that polls every second catch its slot (docs/scheduling.md §7.4).
LOCALNET_DUE_MARGIN_BLOCKS = 10
# Localnet chain reads are local HTTP: a slow answer means a stuck simulator, so fail fast.
LOCALNET_CALL_TIMEOUT_S = 5.0
# A restarted simulator is noticed within 10 s; localnet has no rate limit to protect.
LOCALNET_BACKOFF_FIRST_S = 1.0
LOCALNET_BACKOFF_MAX_S = 10.0


@dataclass(frozen=True, slots=True)
class PlannerParams:
    """Everything the planner's timing depends on; the defaults are production's.

    `cycle` fixes the cycle grid (length = 2 × (tempo + 1)), `slots` the list and the start-block
    offset, `run` the due window and the block time. All validators must share `cycle` and
    `slots.run_offset`, or their slots stop interleaving (docs/scheduling.md §3).
    """

    netuid: int = 12
    cycle: CycleParams = field(default_factory=CycleParams)
    slots: SlotParams = field(default_factory=SlotParams)
    run: RunParams = field(default_factory=RunParams)
    plan_interval_s: float = PLAN_INTERVAL_S
    call_timeout_s: float = CALL_TIMEOUT_S
    retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S
    backoff_first_s: float = BACKOFF_FIRST_S
    backoff_max_s: float = BACKOFF_MAX_S

    def __post_init__(self) -> None:
        if self.cycle.netuid != self.netuid:
            raise ValueError(f"cycle grid is for netuid {self.cycle.netuid}, planner for {self.netuid}")
        if self.slots.run_offset >= self.cycle.cycle_length:
            raise ValueError(
                f"run offset {self.slots.run_offset} must be shorter than the cycle "
                f"({self.cycle.cycle_length} blocks)"
            )
        if self.slots.max_validators > self.cycle.cycle_length - self.slots.run_offset:
            # Fewer blocks than validators after the offset: two validators would share a slot.
            raise ValueError("the cycle needs at least one block per validator after the run offset")
        for name in ("plan_interval_s", "call_timeout_s", "backoff_first_s", "backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.run.block_time_s <= 0 or self.run.poll_interval_s <= 0:
            raise ValueError("block_time_s and poll_interval_s must be > 0")
        if self.run.max_oversleep < 0 or self.run.wait_in_advance < 0:
            raise ValueError("max_oversleep and wait_in_advance must be >= 0")


def planner_params_from(
    *,
    netuid: int,
    localnet: bool = False,
    cycle_length: int | None = None,
    run_offset: int | None = None,
    block_time_s: float | None = None,
    plan_interval_s: float | None = None,
    max_oversleep_blocks: int | None = None,
    wait_in_advance_blocks: int | None = None,
    min_stake: float | None = None,
) -> PlannerParams:
    """Production defaults, localnet's faster clock when `localnet`, then each explicit value.

    The caller passes the settings' values (None = not set); nothing here reads the environment.
    Raises `ValueError` on a combination that cannot produce distinct slots.
    """
    tempo = CycleParams().tempo
    cycle = CycleParams(netuid=netuid, tempo=tempo)
    if cycle_length is not None:
        cycle = CycleParams.for_cycle_length(cycle_length, netuid=netuid)
    slots = SlotParams(
        run_offset=RUN_OFFSET_BLOCKS if run_offset is None else run_offset,
        **({} if min_stake is None else {"min_stake": min_stake}),
    )
    margin_back, margin_ahead = MAX_OVERSLEEP_BLOCKS, WAIT_IN_ADVANCE_BLOCKS
    block_time, poll, interval = BLOCK_TIME_S, POLL_INTERVAL_S, PLAN_INTERVAL_S
    timeout, backoff_first, backoff_max = CALL_TIMEOUT_S, BACKOFF_FIRST_S, BACKOFF_MAX_S
    if localnet:
        margin_back = margin_ahead = LOCALNET_DUE_MARGIN_BLOCKS
        block_time, poll, interval = LOCALNET_BLOCK_TIME_S, LOCALNET_POLL_INTERVAL_S, LOCALNET_PLAN_INTERVAL_S
        timeout, backoff_first, backoff_max = (
            LOCALNET_CALL_TIMEOUT_S,
            LOCALNET_BACKOFF_FIRST_S,
            LOCALNET_BACKOFF_MAX_S,
        )
    run = RunParams(
        max_oversleep=margin_back if max_oversleep_blocks is None else max_oversleep_blocks,
        wait_in_advance=margin_ahead if wait_in_advance_blocks is None else wait_in_advance_blocks,
        block_time_s=block_time if block_time_s is None else block_time_s,
        poll_interval_s=poll,
    )
    return PlannerParams(
        netuid=netuid,
        cycle=cycle,
        slots=slots,
        run=run,
        plan_interval_s=interval if plan_interval_s is None else plan_interval_s,
        call_timeout_s=timeout,
        backoff_first_s=backoff_first,
        backoff_max_s=backoff_max,
    )


def cycles_to_plan(head: int, params: CycleParams) -> list[range]:
    """The cycles whose batch may be planned at `head`, earliest first (docs/scheduling.md §7.1).

    The cycle holding `head`, and the next one once its start block is on chain: on the boundary
    block itself (`head == cycle.stop`, which §1.1 assigns to the ending cycle) the next cycle's
    list block and seed block both exist, so its batch is planned one check earlier. A cycle whose
    start is still in the future cannot be planned: its list and seed are unknown.
    """
    current = cycle_containing(head, params)
    following = cycle_after(current, params)
    return [c for c in (current, following) if c.start <= head]


def list_snapshot_block(cycle_start: int, at_or_before: int | None, after: int | None) -> int | None:
    """Which stored snapshot stands for the validator list at `cycle_start` (docs/scheduling.md §7.2).

    `at_or_before` is the newest stored snapshot block `<= cycle_start`, `after` the oldest one
    `> cycle_start`. Returns None (wait) while no snapshot at or after the start exists: the sync
    has not reached the cycle yet, and the list the other validators use is not known. Otherwise
    the snapshot nearest to the start, the earlier one on a tie (the chain's state at the start is
    the state after the earlier block).
    """
    if after is None and at_or_before != cycle_start:
        return None
    if at_or_before is None:
        return after
    if after is None or cycle_start - at_or_before <= after - cycle_start:
        return at_or_before
    return after


def missed_before(head: int, run: RunParams) -> int:
    """Un-started batches with a block below this are missed: past the oversleep margin
    (docs/scheduling.md §4, §7.3)."""
    return head - run.max_oversleep


class PlanStatus(StrEnum):
    """The outcome of planning one cycle."""

    SCHEDULED = "scheduled"  # a batch row was inserted for this validator's slot
    ALREADY_SCHEDULED = "already_scheduled"  # a batch already lies in the cycle (ours or a replica's)
    NOT_A_VALIDATOR = "not_a_validator"  # our hotkey is not on the cycle's list: no batch
    NO_SNAPSHOT = "no_snapshot"  # the metagraph at the cycle start is not stored yet: try later
    CHAIN_ERROR = "chain_error"  # the seed block's hash could not be read: try later


@dataclass(frozen=True, slots=True)
class CyclePlan:
    """What `schedule_once` did for one cycle; `block` is the batch's start block when known."""

    cycle: range
    status: PlanStatus
    block: int | None = None
    batch_id: int | None = None
    index: int | None = None
    validator_count: int = 0


@dataclass(frozen=True, slots=True)
class DueBatch:
    """The batch the coordinator acts on now (docs/scheduling.md §7.4).

    `plan.action` says what to do: `RUN_NOW`/`RUN_OVERSLEPT`/`RUN_UNSCHEDULED` — the row's
    `started_at` is already set (this caller owns the start, no other scheduler will start it);
    `WAIT` — nothing was marked: re-read the chain every `run.poll_interval_s`, at most
    `plan.max_polls` times, and call `due_batches` again once the head reaches `plan.target_block`.
    """

    batch_id: int
    batch_uuid: str
    block: int | None
    cycle_id: int | None
    plan: RunPlan
    others_due: int = 0

    @property
    def started(self) -> bool:
        return self.plan.action is not RunAction.WAIT
