"""Epoch and cycle arithmetic: which half-open block ranges a block belongs to (`docs/scheduling.md §1`).

Pure integer maths, no chain access: every validator must derive the same ranges from a block
number alone, because a cycle is the unit in which each validator runs exactly one synthetic batch
and from which weights are later set.

Ranges are Python `range` objects, and `batch_block in cycle` is the `start <= block < stop` test the
scheduler uses for "a batch is already scheduled in this cycle". Note the boundary quirk, kept for
agreement with the other validators: the range *computed for* block `b` satisfies `start < b <= stop`,
so a block lying exactly on a boundary gets the range that ends there (docs/scheduling.md §1.1).
"""

from __future__ import annotations

from dataclasses import dataclass

# Subtensor's tempo for subnet 12 in the target period; the validator hard-codes it rather than reading
# the hyperparameter, and an epoch spans tempo + 1 blocks (docs/scheduling.md §1.1).
PRODUCTION_TEMPO = 360
# ComputeHorde's subnet; the netuid shifts every epoch boundary (docs/scheduling.md §1.1).
PRODUCTION_NETUID = 12
# A cycle is two consecutive epochs starting on an even-numbered one (docs/scheduling.md §1.2).
EPOCHS_PER_CYCLE = 2


@dataclass(frozen=True, slots=True)
class CycleParams:
    """The chain constants the cycle grid depends on.

    Production uses the defaults (722-block cycles on netuid 12); localnet passes a small tempo so a
    cycle lasts minutes, not hours. Use `for_cycle_length` to ask for a cycle length directly.
    """

    netuid: int = PRODUCTION_NETUID
    tempo: int = PRODUCTION_TEMPO

    def __post_init__(self) -> None:
        if self.tempo < 1:
            raise ValueError(f"tempo must be >= 1, got {self.tempo}")
        if self.netuid < 0:
            raise ValueError(f"netuid must be >= 0, got {self.netuid}")

    @classmethod
    def for_cycle_length(cls, cycle_length: int, netuid: int = PRODUCTION_NETUID) -> CycleParams:
        """Params whose cycles are `cycle_length` blocks (even, >= 4: two epochs of tempo + 1 >= 2)."""
        if cycle_length < 2 * EPOCHS_PER_CYCLE or cycle_length % EPOCHS_PER_CYCLE:
            raise ValueError(f"cycle length must be an even number >= 4, got {cycle_length}")
        return cls(netuid=netuid, tempo=cycle_length // EPOCHS_PER_CYCLE - 1)

    @property
    def epoch_length(self) -> int:
        """Blocks per epoch: tempo + 1, as subtensor counts them (361 in production)."""
        return self.tempo + 1

    @property
    def cycle_length(self) -> int:
        """Blocks per cycle (722 in production, about 2 h 24 min at 12 s a block)."""
        return EPOCHS_PER_CYCLE * self.epoch_length


PRODUCTION = CycleParams()


def epoch_containing(block: int, params: CycleParams = PRODUCTION) -> range:
    """The epoch holding `block` (docs/scheduling.md §1.1).

    A block that sits exactly on a boundary gets the epoch that *ends* there: `start < block <= stop`
    (with netuid 12, block 347 gets `[-14, 347)` and 348 gets `[347, 708)`). That mirrors subtensor's
    "blocks until next epoch" and is what the other validators compute, so we keep it.
    """
    length = params.epoch_length
    start = block - 1 - (block + params.netuid + 1) % length
    return range(start, start + length)


def epoch_number(block: int, params: CycleParams = PRODUCTION) -> int:
    """Index of the epoch holding `block`, counting the epoch that holds block 0 as 0
    (docs/scheduling.md §1.2). Epochs before it are negative."""
    first = epoch_containing(0, params).start
    return (epoch_containing(block, params).start - first) // params.epoch_length


def cycle_containing(block: int, params: CycleParams = PRODUCTION) -> range:
    """The cycle holding `block` (docs/scheduling.md §1.2).

    A cycle is an even-numbered epoch followed by the next one; a block in an odd-numbered epoch
    belongs to the cycle that started one epoch earlier. Boundaries follow `epoch_containing`:
    `start < block <= stop`.
    """
    epoch = epoch_containing(block, params)
    start = epoch.start - (epoch_number(block, params) % EPOCHS_PER_CYCLE) * params.epoch_length
    return range(start, start + params.cycle_length)


def cycle_number(block: int, params: CycleParams = PRODUCTION) -> int:
    """Index of the cycle holding `block`; cycle 0 is the one holding block 0 (docs/scheduling.md §1.2)."""
    return epoch_number(block, params) // EPOCHS_PER_CYCLE


def cycle_after(cycle: range, params: CycleParams = PRODUCTION) -> range:
    """The cycle that follows `cycle` (it starts at `cycle.stop`); cycles tile the chain without gaps."""
    return cycle_containing(cycle.stop + 1, params)


def cycle_before(cycle: range, params: CycleParams = PRODUCTION) -> range:
    """The cycle that precedes `cycle` (it stops at `cycle.start`; block `cycle.start` itself maps to it)."""
    return cycle_containing(cycle.start, params)
