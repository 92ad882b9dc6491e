"""Malformed-frame floods against the sans-I/O `MinerSession` (issue 6 §1, "error replies amplify a
flood"): replies stay within the garbage received, and a burst of malformed frames closes the link.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from horde_common.crypto import keypair_from_seed
from horde_common.protocol.miner import MalformedMessage, MinerSession, dumps
from horde_common.protocol.miner.events import MalformedFlood
from horde_common.protocol.miner.flood import (
    MALFORMED_FRAME_LIMIT,
    MALFORMED_WINDOW,
    REPLY_FRAME_OVERHEAD,
    MalformedFramePolicy,
    frame_size,
)

VALIDATOR = keypair_from_seed("//horde-validator-0")
MINER = keypair_from_seed("//horde-miner-0").ss58_address
T0 = datetime(2024, 11, 28, 10, 0, 0, tzinfo=UTC)
MANIFEST = (
    '{"message_type": "V0ExecutorManifestRequest", "manifest": '
    '{"executor_classes": [{"executor_class": "always_on.gpu-24gb", "count": 1}]}}'
)


def session(policy: MalformedFramePolicy | None = None) -> MinerSession:
    s = MinerSession.with_keypair(VALIDATOR, miner_hotkey=MINER, miner_address="1.2.3.4", miner_port=8000)
    if policy is not None:
        s.flood = policy
    s.connected(T0)
    return s


def wire(reply: object) -> int:
    """What a reply costs on the wire, as the budget charges it."""
    return len(dumps(reply).encode()) + REPLY_FRAME_OVERHEAD  # type: ignore[arg-type]


def test_constants_are_the_documented_ones() -> None:
    assert MALFORMED_FRAME_LIMIT == 100
    assert timedelta(seconds=60) == MALFORMED_WINDOW
    assert REPLY_FRAME_OVERHEAD == 14  # 2 + 8 (64-bit length) + 4 (mask)


def test_one_byte_flood_gets_no_reply_and_closes_at_the_limit() -> None:
    """The observed attack: one-byte frames used to get a 136-byte GenericError each."""
    s = session()
    closes: list[int] = []
    floods: list[MalformedFlood] = []
    sent = received = 0
    for i in range(5_000):
        result = s.receive(b"x", T0 + timedelta(milliseconds=i))
        received += 1
        sent += sum(wire(m) for m in result.outgoing)
        assert any(isinstance(e, MalformedMessage) for e in result.events)
        floods += [e for e in result.events if isinstance(e, MalformedFlood)]
        if result.close:
            closes.append(i)
    assert sent == 0 < received
    assert closes == [MALFORMED_FRAME_LIMIT - 1]  # once, on the 100th frame
    (flood,) = floods
    assert (flood.malformed_frames, flood.window_s) == (MALFORMED_FRAME_LIMIT, 60.0)
    assert (flood.bytes_received, flood.bytes_replied) == (MALFORMED_FRAME_LIMIT, 0)
    assert s.close_requested


def test_large_garbage_is_still_answered_within_the_budget() -> None:
    """The original's "Malformed message from miner ..." reply survives for garbage that pays for it."""
    s = session()
    result = s.receive("x" * 1_000, T0)
    (reply,) = result.outgoing
    assert reply.details.startswith(f"Malformed message from miner {MINER}(1.2.3.4:8000): ")  # type: ignore[union-attr]
    assert s.flood.bytes_replied == wire(reply) <= 1_000
    assert not result.close


def test_replies_resume_only_once_enough_garbage_has_arrived() -> None:
    s = session()
    cost = wire(s.receive("x" * 1_000, T0).outgoing[0])
    # Each 40-byte frame is worth less than one reply: the next reply needs about `cost` bytes.
    replies = [bool(s.receive("y" * 40, T0 + timedelta(seconds=i + 1)).outgoing) for i in range(60)]
    assert replies.count(True) >= 1
    first = replies.index(True)
    assert 1_000 + 40 * (first + 1) >= 2 * cost
    assert s.flood.bytes_replied <= s.flood.bytes_received


def test_spread_out_garbage_never_closes() -> None:
    """One malformed frame a second is 60 a window: under the limit however long it goes on."""
    s = session()
    for i in range(1_000):
        assert not s.receive("x", T0 + timedelta(seconds=i)).close
    assert not s.close_requested and s.flood.malformed_frames == 1_000


def test_nothing_is_answered_after_the_flood_closed() -> None:
    s = session(MalformedFramePolicy(limit=3))
    for i in range(3):
        s.receive("x", T0 + timedelta(seconds=i))
    assert s.close_requested
    assert s.receive("x" * 100_000, T0 + timedelta(seconds=10)).outgoing == ()


def test_valid_frames_do_not_count_towards_the_limit() -> None:
    s = session(MalformedFramePolicy(limit=2))
    for i in range(50):
        assert not s.receive(MANIFEST, T0 + timedelta(milliseconds=i)).close
    assert s.flood.malformed_frames == 0 and not s.close_requested


def test_frame_size_never_exceeds_the_bytes_on_the_wire() -> None:
    assert frame_size("é" * 10) == 10 <= len(("é" * 10).encode())
    assert frame_size(b"abc") == frame_size(bytearray(b"abc")) == frame_size(memoryview(b"abc")) == 3
    assert frame_size(memoryview(b"abcd").cast("H")) == 4


def test_policy_rejects_a_limit_below_one() -> None:
    with pytest.raises(ValueError):
        MalformedFramePolicy(limit=0)


def _trips_naive(times: list[int], limit: int, window: int) -> int | None:
    """Reference model: the first index at which `limit` frames fall within `window` (ms)."""
    for i, t in enumerate(times):
        inside = [u for u in times[: i + 1] if t - u <= window]
        if len(inside) >= limit:
            return i
    return None


frames = st.lists(
    st.tuples(st.integers(0, 3_000), st.integers(0, 5_000), st.booleans()),
    max_size=60,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(frames, st.integers(1, 12), st.integers(1, 30))
def test_replies_never_exceed_garbage_and_close_follows_the_window(
    steps: list[tuple[int, int, bool]], limit: int, window_s: int
) -> None:
    """Frame sizes in bytes and gaps in ms at random: the budget holds at every step, and the link
    closes exactly once, on the first frame that makes `limit` malformed frames within the window."""
    s = session(MalformedFramePolicy(limit=limit, window=timedelta(seconds=window_s)))
    now, received, sent = 0, 0, 0
    times: list[int] = []
    closed_at: list[int] = []
    for i, (size, dt, binary) in enumerate(steps):
        now += dt
        times.append(now)
        raw: str | bytes = b"\xff" * size if binary else "x" * size
        result = s.receive(raw, T0 + timedelta(milliseconds=now))
        received += size
        sent += sum(wire(m) for m in result.outgoing)
        assert sent <= received  # at every step, headers of our frames included
        assert s.flood.bytes_replied == sent
        if result.close:
            closed_at.append(i)
            assert any(isinstance(e, MalformedFlood) for e in result.events)
    expected = _trips_naive(times, limit, window_s * 1_000)
    assert closed_at == ([] if expected is None else [expected])
