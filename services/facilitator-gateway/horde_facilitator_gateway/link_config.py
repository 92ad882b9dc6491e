"""What a facilitator link connects to and how patiently it waits (docs/organic.md, "Facilitator
gateway": bounded waits). Apart from `link.py` so the adapter itself stays small."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from horde_common.config import Settings
from horde_common.protocol.facilitator import connect_retry_delay

OPEN_TIMEOUT_S: Final = 10.0
"""TCP + TLS + upgrade, the original client's open timeout."""
AUTH_TIMEOUT_S: Final = 10.0
"""The facilitator answers authentication at once; one that stays silent this long is treated as a
refusal, so a half-open connection cannot hold the link for ever."""
SEND_TIMEOUT_S: Final = 10.0
"""One frame written to the socket; a socket this slow is dead and gets replaced."""
CLOSE_TIMEOUT_S: Final = 5.0
PING_INTERVAL_S: Final = 20.0
"""WebSocket ping period and pong timeout, the original client's defaults: a dead peer is noticed
within about 40 s even when no frame is due."""
STATUS_WAIT_S: Final = 10.0
"""How long a status update waits for an authenticated connection before its bus message goes back
to the queue (the bus then retries it with backoff); with the bus's five deliveries this covers
about a minute of outage, more than the original's 35 s of send retries (docs/organic.md §1.9)."""
RECORD_TIMEOUT_S: Final = 5.0
"""Recording a written status update in `facilitator_status_sent` (one indexed insert, milliseconds);
the drainer writes nothing else meanwhile, so a stalled database must not hold the link for long."""

RetryDelay = Callable[[int, random.Random], float]


@dataclass
class LinkConfig:
    """What one link connects to and how patiently. Mutable so tests can shorten the waits."""

    uri: str
    signers: frozenset[str]
    headers: dict[str, str]
    open_timeout_s: float = OPEN_TIMEOUT_S
    auth_timeout_s: float = AUTH_TIMEOUT_S
    send_timeout_s: float = SEND_TIMEOUT_S
    status_wait_s: float = STATUS_WAIT_S
    record_timeout_s: float = RECORD_TIMEOUT_S
    retry_delay: RetryDelay = connect_retry_delay
    rng: random.Random = field(default_factory=random.Random)


def version_headers(settings: Settings) -> dict[str, str]:
    """The upgrade request's version headers (docs/organic.md §1.2), `unknown` when unset."""
    return {
        "X-Validator-Version": settings.VALIDATOR_VERSION or "unknown",
        "X-Validator-Runner-Version": settings.VALIDATOR_RUNNER_VERSION or "unknown",
    }
