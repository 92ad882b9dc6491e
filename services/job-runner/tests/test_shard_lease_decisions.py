"""The shard lease's pure decisions: what a delivery does given the shard row, and what a live lease elsewhere is waited for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from horde_job_runner.synthetic import handler
from horde_job_runner.synthetic.shard_lease import (
    LeaseDecision,
    LeaseWatch,
    ShardRow,
    decide,
    lease_verdict,
    lease_wait_bound,
)

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LIVE, LAPSED, SENT = NOW + timedelta(seconds=10), NOW - timedelta(seconds=1), NOW - timedelta(seconds=5)


# --- the pure decision ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "marker", "late", "expected"),
    [
        # nobody ran it: run (unless late)
        (None, False, False, LeaseDecision.RUN),
        (ShardRow("requested", None, None, None), False, False, LeaseDecision.RUN),
        (ShardRow("ready", None, None, None), False, False, LeaseDecision.RUN),
        (None, False, True, LeaseDecision.TOO_LATE),
        (ShardRow("requested", None, None, None), False, True, LeaseDecision.TOO_LATE),
        # a lapsed lease that never reached the miners: run again
        (ShardRow("requested", "dead", LAPSED, None), False, False, LeaseDecision.RUN),
        (ShardRow("requested", "dead", NOW, None), False, False, LeaseDecision.RUN),  # expiry is exclusive
        # a lapsed lease whose miners may have had their initial requests: fail, never resend
        (ShardRow("requested", "dead", LAPSED, SENT), False, False, LeaseDecision.FAIL_CONTACTED),
        (ShardRow("ready", "dead", LAPSED, SENT), False, True, LeaseDecision.FAIL_CONTACTED),
        (ShardRow("requested", None, None, SENT), False, False, LeaseDecision.FAIL_CONTACTED),
        # a live lease: its owner runs and reports it
        (ShardRow("requested", "other", LIVE, None), False, False, LeaseDecision.HELD_ELSEWHERE),
        (ShardRow("ready", "other", LIVE, SENT), False, True, LeaseDecision.HELD_ELSEWHERE),
        # done: report again, whatever the lease says
        (ShardRow("requested", "dead", LAPSED, SENT), True, False, LeaseDecision.ALREADY_DONE),
        (ShardRow("requested", "other", LIVE, SENT), True, True, LeaseDecision.ALREADY_DONE),
        (None, True, False, LeaseDecision.ALREADY_DONE),
        (ShardRow("completed", None, None, None), False, False, LeaseDecision.ALREADY_DONE),
        (ShardRow("failed", "other", LIVE, SENT), False, True, LeaseDecision.ALREADY_DONE),
    ],
)
def test_decision_table(row: ShardRow | None, marker: bool, late: bool, expected: LeaseDecision) -> None:
    assert decide(row, now=NOW, marker=marker, late=late) is expected


# --- a live lease elsewhere: wait until it is renewed or lapses -----------------------------------

LATER = NOW + timedelta(seconds=20)


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (ShardRow("requested", "other", LIVE, SENT), LeaseWatch.WAITING),  # not renewed, not lapsed
        (ShardRow("requested", "other", LATER, SENT), LeaseWatch.RENEWED),  # its heartbeat landed
        (ShardRow("requested", "taker", LATER, SENT), LeaseWatch.RENEWED),  # taken over: a live owner
        (ShardRow("requested", "other", LAPSED, SENT), LeaseWatch.LAPSED),  # owner died
        (ShardRow("requested", "other", NOW, SENT), LeaseWatch.LAPSED),  # expiry is exclusive
        (ShardRow("requested", "other", None, SENT), LeaseWatch.LAPSED),
        (ShardRow("completed", "other", LIVE, SENT), LeaseWatch.LAPSED),  # closed: decide again
        (ShardRow("failed", "other", LATER, SENT), LeaseWatch.LAPSED),
        (None, LeaseWatch.LAPSED),
    ],
)
def test_lease_verdict_table(current: ShardRow | None, expected: LeaseWatch) -> None:
    seen = ShardRow("requested", "other", LIVE, SENT)
    assert lease_verdict(seen, current, now=NOW) is expected


def test_the_wait_is_bounded_by_one_ttl_and_a_reread() -> None:
    assert lease_wait_bound(30.0) == pytest.approx(30.0 + 10.0 + 1.0)
    assert lease_wait_bound(0.6) == pytest.approx(0.6 + 0.2 + 1.0)


def test_the_runtime_lease_ttl_is_a_constructor_argument() -> None:
    with pytest.raises(ValueError, match="lease_ttl_s"):
        handler.job_runner_runtime_with(lease_ttl_s=0)
    assert handler.JobRunnerRuntime.__dataclass_fields__["lease_ttl_s"].default == 30.0
