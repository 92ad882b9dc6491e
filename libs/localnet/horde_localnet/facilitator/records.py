"""The facilitator simulator's records: jobs with their status updates, per-connection totals, and
the two small types `sim` and `server` share (no logic beyond formatting for the HTTP API)."""

from __future__ import annotations

import uuid as uuid_module
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

__all__ = ["FINAL_STATUSES", "Action", "JobRecord", "Link", "ValidatorStats", "job_key"]

FINAL_STATUSES: Final = frozenset({"rejected", "failed", "completed"})
"""Statuses after which a validator sends nothing more for a job (docs/organic.md §1.4)."""


def job_key(job_uuid: str) -> str:
    """The key a job is recorded under: the canonical form of a UUID (validators answer with
    `str(UUID(...))`, lower case), any other string as it is."""
    try:
        return str(uuid_module.UUID(job_uuid))
    except ValueError:
        return job_uuid


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
    `state`: queued, sent, dropped, or unknown (status updates for a uuid never submitted).
    `sends`: how often the request went out (more than once only when asked, `resend`);
    `finals`: final statuses received, `identical_finals` those equal (status and metadata) to an
    earlier final of the job, as a redelivered status message would be."""

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
    sends: int = 0
    finals: int = 0
    identical_finals: int = 0

    def add_status(self, entry: dict[str, Any]) -> tuple[bool, bool]:
        """Append one status update; for a final one, say whether the job already had a final
        status and whether one of those was identical to it (same status and metadata)."""
        repeated = identical = False
        if entry["status"] in FINAL_STATUSES:
            earlier = [s for s in self.statuses if s["status"] in FINAL_STATUSES]
            repeated = bool(earlier)
            identical = any(
                s["status"] == entry["status"] and s["metadata"] == entry["metadata"] for s in earlier
            )
            self.finals += 1
            self.identical_finals += identical
        self.statuses.append(entry)
        return repeated, identical

    def summary(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "version": self.version,
            "state": self.state,
            "sent_to": self.sent_to,
            "sent_at": self.sent_at,
            "sends": self.sends,
            "statuses": [s["status"] for s in self.statuses],
            "finals": self.finals,
            "duplicate_finals": max(0, self.finals - 1),
            "identical_finals": self.identical_finals,
        }

    def detail(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "submitted_at": self.submitted_at,
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
