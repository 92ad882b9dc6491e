"""The gateway's metrics (docs/organic.md, "Facilitator gateway"): link state, connection attempts,
frames, jobs and status updates, and the organic jobs by status. OpenTelemetry instruments, scraped
at `GET /metrics` in the Prometheus format.

The instruments live on a `LinkMetrics` object built per link, not in module globals; through the
global meter provider they still add up in the one scrape of the process.
"""

from __future__ import annotations

from typing import Final

from opentelemetry.metrics import Counter, UpDownCounter

from horde_common.telemetry import get_meter

METER_NAME: Final = "horde_facilitator_gateway"


class LinkMetrics:
    """Counters of one `FacilitatorLink`. Label values are small fixed sets (never a job uuid)."""

    def __init__(self) -> None:
        meter = get_meter(METER_NAME)
        self.link_up: UpDownCounter = meter.create_up_down_counter(
            "horde_facilitator_link_up", unit="1", description="1 while the facilitator link is authenticated"
        )
        self.connects: Counter = meter.create_counter(
            "horde_facilitator_link_connects",
            unit="1",
            description="Connection attempts to the facilitator, by outcome "
            "(connect_failed, auth_failed, authenticated, ended)",
        )
        self.frames: Counter = meter.create_counter(
            "horde_facilitator_link_frames",
            unit="1",
            description="Facilitator frames by direction (in, out) and invalid inbound ones (invalid)",
        )
        self.jobs: Counter = meter.create_counter(
            "horde_facilitator_jobs",
            unit="1",
            description="Facilitator job requests by outcome (stored, duplicate, v2_rejected, bad_uuid, "
            "store_failed)",
        )
        self.status_updates: Counter = meter.create_counter(
            "horde_facilitator_status_updates",
            unit="1",
            description="Job status updates by status and outcome (sent, link_down, duplicate, stale)",
        )
        # A synchronous gauge set by `report.job_counts_loop`: an observable gauge's callback cannot
        # query the database, and a second instance's callback would be dropped by the SDK.
        self.jobs_by_status = meter.create_gauge(
            "horde_facilitator_jobs_by_status",
            unit="1",
            description="organic_jobs rows by status (PENDING, COMPLETED, FAILED, ...), refreshed periodically",
        )

    def connect(self, outcome: str) -> None:
        self.connects.add(1, {"outcome": outcome})

    def frame(self, direction: str) -> None:
        self.frames.add(1, {"direction": direction})

    def job(self, outcome: str) -> None:
        self.jobs.add(1, {"outcome": outcome})

    def status_update(self, status: str, outcome: str) -> None:
        self.status_updates.add(1, {"status": status, "outcome": outcome})

    def job_counts(self, counts: dict[str, int]) -> None:
        for status, count in counts.items():
            self.jobs_by_status.set(count, {"status": status})
