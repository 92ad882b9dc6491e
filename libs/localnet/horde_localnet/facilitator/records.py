"""The facilitator simulator's records: jobs with their status updates, per-connection totals, and
the two small types `sim` and `server` share (no logic beyond formatting for the HTTP API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Protocol

__all__ = ["FINAL_STATUSES", "Action", "JobRecord", "Link", "ValidatorStats"]

FINAL_STATUSES: Final = frozenset({"rejected", "failed", "completed"})
"""Statuses after which a validator sends nothing more for a job (docs/organic.md §1.4)."""


class Link(Protocol):
    """One validator connection as the simulator sees it (`server` provides it)."""

    serial: int
    hotkey: str | None

    async def send_text(self, text: str) -> bool:
        """Send one text frame; False when the connection is gone."""
        ...


@dataclass(frozen=True, slots=True)
class Action:
    """What the server must do after a frame: send `reply` (if any), then close with `close_code`."""

    reply: str | None = None
    close_code: int | None = None


@dataclass(slots=True)
class JobRecord:
    """One job: what was sent and everything the validator reported about it, in arrival order.
    `state`: queued, sent, dropped, or unknown (status updates for a uuid never submitted)."""

    uuid: str
    version: str | None
    request: dict[str, Any] | None
    submitted_at: float
    state: str
    target: str | None = None
    timeout: float | None = None
    sent_at: float | None = None
    sent_to: str | None = None
    statuses: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "version": self.version,
            "state": self.state,
            "sent_to": self.sent_to,
            "statuses": [s["status"] for s in self.statuses],
        }

    def detail(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "submitted_at": self.submitted_at,
            "sent_at": self.sent_at,
            "target": self.target,
            "timeout": self.timeout,
            "request": self.request,
            "status_updates": list(self.statuses),
        }


@dataclass(slots=True)
class ValidatorStats:
    hotkey: str
    serial: int
    connected_at: float
    frames_in: int = 0
    frames_out: int = 0
    frames_invalid: int = 0
    heartbeats: int = 0
    last_heartbeat: float | None = None
