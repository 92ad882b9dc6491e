"""How a session answers malformed frames without amplifying a flood (sans-I/O, no clock).

The original validator answered every invalid frame with a `GenericError` of ~136 bytes, so a
miner sending one-byte garbage frames made us send >100x what it sent (200,000 frames gave 200,000
replies). Two rules bound that, both fed with caller-supplied sizes and times:

* a byte budget: a reply goes out only while the bytes we have sent in replies, plus this reply,
  stay within the payload bytes of the malformed frames received (so the validator never sends
  more than the garbage it got; small garbage gets no answer at all);
* a rate limit: `MALFORMED_FRAME_LIMIT` malformed frames within `MALFORMED_WINDOW` close the
  connection; the caller records the flood against the miner.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

MALFORMED_FRAME_LIMIT: Final = 100
"""Malformed frames tolerated per window. A 0.0.18 miner sends none (every frame it sends parses),
so any count above a handful is a broken or hostile peer; 100 still leaves room for a newer miner
that sends a few message types we do not know, while bounding the parse-and-log work a flood costs
us to 100 frames per window."""

MALFORMED_WINDOW: Final = timedelta(seconds=60)
"""The sliding window for `MALFORMED_FRAME_LIMIT`: about one batch's manifest-and-spin-up stretch,
so a burst anywhere in a batch is caught, while one bad frame a job over a whole batch is not."""

REPLY_FRAME_OVERHEAD: Final = 14
"""Bytes charged per reply on top of its payload: the largest WebSocket header of a masked client
frame (2 + 8 length + 4 mask). The miner's frames are credited with their payload only, so the
budget holds on the wire, headers included."""


def frame_size(raw: str | bytes | bytearray | memoryview) -> int:
    """The payload size credited for a frame. For text, the character count: never more than its
    UTF-8 byte count, so the budget can only err on the side of replying less."""
    if isinstance(raw, memoryview):
        return raw.nbytes
    return len(raw)


@dataclass(frozen=True, slots=True)
class FloodStats:
    """What the policy has seen: the figures put in the miner's event when the link is closed."""

    malformed_frames: int
    bytes_received: int
    bytes_replied: int
    replies: int


class MalformedFramePolicy:
    """Per miner (across reconnects): the reply budget and the malformed-frame rate limit."""

    def __init__(
        self,
        *,
        limit: int = MALFORMED_FRAME_LIMIT,
        window: timedelta = MALFORMED_WINDOW,
        reply_overhead: int = REPLY_FRAME_OVERHEAD,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window
        self.reply_overhead = reply_overhead
        self._recent: collections.deque[datetime] = collections.deque(maxlen=limit)
        self.malformed_frames = 0
        self.bytes_received = 0
        self.bytes_replied = 0
        self.replies = 0
        self.tripped = False

    def record(self, size: int, now: datetime) -> bool:
        """Count one malformed frame of `size` payload bytes received at `now`. True exactly once:
        when this frame makes `limit` malformed frames within `window` (the caller closes)."""
        self.malformed_frames += 1
        self.bytes_received += max(0, size)
        recent = self._recent
        recent.append(now)
        while recent and now - recent[0] > self.window:
            recent.popleft()
        if not self.tripped and len(recent) >= self.limit:
            self.tripped = True
            return True
        return False

    def affordable(self, payload_size: int) -> bool:
        """Whether a reply of `payload_size` bytes fits the budget (nothing after a close)."""
        cost = payload_size + self.reply_overhead
        return not self.tripped and self.bytes_replied + cost <= self.bytes_received

    def spend(self, payload_size: int) -> bool:
        """Charge a reply of `payload_size` bytes if it fits; False if it does not."""
        if not self.affordable(payload_size):
            return False
        self.bytes_replied += payload_size + self.reply_overhead
        self.replies += 1
        return True

    def stats(self) -> FloodStats:
        return FloodStats(self.malformed_frames, self.bytes_received, self.bytes_replied, self.replies)
