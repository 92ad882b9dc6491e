"""Commit and reveal windows of the salted commit path (`docs/scoring.md` §2.5), default numbers."""

from __future__ import annotations

from types import SimpleNamespace

from horde_weights.windows import CommitRevealWindows

W = CommitRevealWindows()


def test_the_interval_722_to_1444() -> None:
    commit = [b for b in range(722, 1444) if W.in_commit_window(b)]
    reveal = [b for b in range(722, 1444) if W.in_reveal_window(b)]
    assert (commit[0], commit[-1], len(commit)) == (1083, 1428, 346)
    assert (reveal[0], reveal[-1], len(reveal)) == (722, 1067, 346)
    assert W.reveal_range(722) == W.reveal_range(1443) == (1444, 2166)


def test_zero_settings_fall_back_to_the_defaults() -> None:
    zeros = SimpleNamespace(
        commit_reveal_weights_interval=0,
        commit_reveal_commit_start_offset=0,
        commit_reveal_commit_end_buffer=0,
        commit_reveal_reveal_end_buffer=0,
    )
    assert CommitRevealWindows.from_dynamic(zeros) == W
