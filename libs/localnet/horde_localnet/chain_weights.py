"""The localnet chain's weight rules that are plain arithmetic: the legacy commit-reveal
interval grid and the max-weight check (no state, no I/O).

`docs/weights.md` §8 states the rules; `horde_localnet.chain_sim.ChainSim` applies them.
"""

from __future__ import annotations

from collections.abc import Sequence

from horde_common.chain import U16_MAX


def interval_start(block: int, interval: int) -> int:
    """First block of the commit-reveal interval holding `block` (intervals are `[kL, (k+1)L)`)."""
    return block - block % interval


def reveal_window(commit_block: int, interval: int) -> tuple[int, int]:
    """`[start, end)` in which a commit made at `commit_block` may be revealed: the whole
    interval right after the commit's. Interval 0 means no window (the chain's convention)."""
    if interval <= 0:
        return 0, 2**63
    start = interval_start(commit_block, interval) + interval
    return start, start + interval


def may_commit(previous_commit_block: int | None, head: int, interval: int) -> bool:
    """One commit per hotkey per interval: a new commit is taken if there is none pending or
    the pending one is from an earlier interval (the new one replaces it)."""
    if previous_commit_block is None or interval <= 0:
        return True
    return interval_start(head, interval) > interval_start(previous_commit_block, interval)


def within_max_weight(values: Sequence[int], max_weight_limit: int) -> bool:
    """The largest value's share of the total is at most `max_weight_limit / 65535`.

    A limit of 65535 means no cap; an all-zero vector passes (its shares are all 0). Compared in
    integers, so no rounding decides a borderline vector.
    """
    if max_weight_limit >= U16_MAX:
        return True
    total = sum(values)
    if total == 0:
        return True
    return max(values) * U16_MAX <= max_weight_limit * total
