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
    status_link_down: int = 0
    # status deliveries by outcome: sent, duplicate (message already written: acked, not sent again),
    # stale (older than a final status of its job already written: acked, not sent)
    status: dict[str, int] = field(default_factory=dict)
    status_record_failed: int = 0  # written, but the `facilitator_status_sent` row did not commit
    status_repeated_finals: int = 0  # a final status sent to a job that already had one (V2 retries)
    jobs: dict[str, int] = field(default_factory=dict)  # by outcome: stored, duplicate, v2_rejected, ...
