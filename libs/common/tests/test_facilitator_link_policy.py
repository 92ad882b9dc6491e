"""Reconnect and send-retry timing of the facilitator link (docs/organic.md §1.10)."""

from __future__ import annotations

import random

import pytest

from horde_common.protocol.facilitator import (
    MAX_RECONNECTS,
    SEND_ATTEMPTS,
    connect_retry_delay,
    send_retry_delay,
    should_stop_reconnecting,
)


def test_first_connect_retry_is_jittered_within_five_seconds() -> None:
    rng = random.Random(7)
    delays = [connect_retry_delay(1, rng) for _ in range(200)]
    assert all(0 <= d < 5 for d in delays)
    assert len(set(delays)) > 100
    assert connect_retry_delay(1, random.Random(3)) == connect_retry_delay(1, random.Random(3))


def test_later_connect_retries_grow_and_cap_at_a_minute() -> None:
    rng = random.Random(0)
    delays = [connect_retry_delay(n, rng) for n in range(2, 12)]
    assert delays == [3, 5, 8, 13, 21, 34, 55, 60, 60, 60]
    assert connect_retry_delay(10_000, rng) == 60


def test_send_retries_wait_about_35_seconds_over_seven_attempts() -> None:
    assert SEND_ATTEMPTS == 7
    delays = [send_retry_delay(n) for n in range(1, SEND_ATTEMPTS)]
    assert delays == [1, 2, 4, 8, 10, 10] and sum(d or 0 for d in delays) == 35
    assert send_retry_delay(SEND_ATTEMPTS) is None
    with pytest.raises(ValueError):
        send_retry_delay(0)


def test_sixth_ended_connection_stops_the_client() -> None:
    """docs/organic.md §1.10: after 6 established connections end, the client loop exits."""
    assert MAX_RECONNECTS == 5
    assert [should_stop_reconnecting(n) for n in range(1, 8)] == [False] * 5 + [True, True]
