"""Pure timing policies of the facilitator link: reconnect delays, send retries, and when to stop
reconnecting (docs/organic.md §1.9–§1.10). No clock, no sleep:
the caller sleeps for what these return, and passes its own random number generator.
"""

from __future__ import annotations

import random
from typing import Final

__all__ = [
    "CONNECT_BACKOFF_FACTOR",
    "CONNECT_BACKOFF_INITIAL_JITTER",
    "CONNECT_BACKOFF_MAX",
    "CONNECT_BACKOFF_MIN",
    "MAX_RECONNECTS",
    "SEND_ATTEMPTS",
    "SEND_RETRY_DELAYS",
    "connect_retry_delay",
    "send_retry_delay",
    "should_stop_reconnecting",
]

CONNECT_BACKOFF_INITIAL_JITTER: Final = 5.0
"""The first retry after a failed connect waits a random 0–5 s, so validators cut off together do
not all come back in the same instant."""
CONNECT_BACKOFF_MIN: Final = 3.1
"""The second retry's delay; each later one grows by `CONNECT_BACKOFF_FACTOR` (3, 5, 8, 13, ... s)."""
CONNECT_BACKOFF_FACTOR: Final = 1.618
CONNECT_BACKOFF_MAX: Final = 60.0
"""Cap: an unreachable facilitator is retried at least once a minute."""

MAX_RECONNECTS: Final = 5
"""Established connections that may end before the client stops for a restart: the facilitator
can force a validator restart by disconnecting it six times."""

SEND_RETRY_DELAYS: Final = (1.0, 2.0, 4.0, 8.0, 10.0, 10.0)
"""Waits between the attempts to send one message while no authenticated connection exists
(about 35 s in all); after the last attempt the send fails."""
SEND_ATTEMPTS: Final = len(SEND_RETRY_DELAYS) + 1


def connect_retry_delay(failures: int, rng: random.Random) -> float:
    """Seconds to wait after the `failures`-th consecutive failure to *establish* a connection
    (1-based). Whole seconds after the first, as the original's client truncated them. The count
    resets after a connection is established; an established connection that ends is retried at
    once (see `should_stop_reconnecting`)."""
    if failures <= 1:
        return rng.random() * CONNECT_BACKOFF_INITIAL_JITTER
    # Capped in the exponent too, so a huge failure count cannot overflow the float.
    delay = CONNECT_BACKOFF_MIN * CONNECT_BACKOFF_FACTOR ** min(failures - 2, 64)
    return float(int(min(delay, CONNECT_BACKOFF_MAX)))


def send_retry_delay(failed_attempts: int) -> float | None:
    """Seconds to wait after `failed_attempts` failed sends of one message, or None when it has
    failed `SEND_ATTEMPTS` times and the error goes to the caller."""
    if failed_attempts < 1:
        raise ValueError("failed_attempts counts failures and starts at 1")
    if failed_attempts > len(SEND_RETRY_DELAYS):
        return None
    return SEND_RETRY_DELAYS[failed_attempts - 1]


def should_stop_reconnecting(ended_connections: int) -> bool:
    """True once more than `MAX_RECONNECTS` established connections have ended (the sixth)."""
    return ended_connections > MAX_RECONNECTS
