"""Commit-reveal interval arithmetic for the salted commit path (`docs/scoring.md` §2.5).

Pure. The chain groups blocks into intervals of `interval` blocks starting at multiples of it; a
commit made in one interval is revealed in the next. Inside an interval the validator commits only
in the second half (minus a safety buffer at the end) and reveals only in the first half (minus a
buffer), so a commit and its reveal never race the interval boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CommitRevealWindows:
    """The four `DYNAMIC_COMMIT_REVEAL_*` numbers; defaults are subnet 12's (two 361-block epochs)."""

    interval: int = 722
    commit_start_offset: int = 361
    commit_end_buffer: int = 15
    reveal_end_buffer: int = 15

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"commit-reveal interval must be > 0, got {self.interval}")

    @classmethod
    def from_dynamic(cls, settings: Any) -> CommitRevealWindows:
        """From `DynamicSettings`; a zero (unset) value keeps the default, like the reference."""
        default = cls()
        return cls(
            interval=settings.commit_reveal_weights_interval or default.interval,
            commit_start_offset=settings.commit_reveal_commit_start_offset or default.commit_start_offset,
            commit_end_buffer=settings.commit_reveal_commit_end_buffer or default.commit_end_buffer,
            reveal_end_buffer=settings.commit_reveal_reveal_end_buffer or default.reveal_end_buffer,
        )

    def interval_start(self, block: int) -> int:
        """First block of the interval containing `block`."""
        return block - block % self.interval

    def in_commit_window(self, block: int) -> bool:
        """`[start + offset, stop - commit_end_buffer)` of `block`'s interval."""
        start = self.interval_start(block)
        return start + self.commit_start_offset <= block < start + self.interval - self.commit_end_buffer

    def in_reveal_window(self, block: int) -> bool:
        """`[start, start + offset - reveal_end_buffer)` of `block`'s interval."""
        start = self.interval_start(block)
        return start <= block < start + self.commit_start_offset - self.reveal_end_buffer

    def reveal_range(self, commit_block: int) -> tuple[int, int]:
        """The blocks a commit made at `commit_block` may be revealed in: the whole next interval,
        both ends inclusive (the reference let the last block through; the window check above is
        the real limit)."""
        start = self.interval_start(commit_block) + self.interval
        return start, start + self.interval
