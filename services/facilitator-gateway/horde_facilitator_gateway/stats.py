"""What `GET /debug/link` shows about one link: plain counters the link updates as it goes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LinkStats:
    """Totals since the service started (the metrics carry the same, for scraping)."""

    state: str = "idle"  # idle, connecting, authenticating, ready, waiting, stopped
    connect_attempts: int = 0
    auth_failures: int = 0
    authenticated_connections: int = 0
    ended_connections: int = 0
    connected_since: str | None = None
    next_retry_in_s: float | None = None
    last_error: str | None = None
    frames_in: int = 0
    frames_out: int = 0
    frames_invalid: int = 0
    heartbeats: int = 0
    status_sent: int = 0
    status_link_down: int = 0
    jobs: dict[str, int] = field(default_factory=dict)  # by outcome: stored, duplicate, v2_rejected, ...
