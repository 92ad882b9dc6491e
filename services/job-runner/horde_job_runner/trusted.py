"""`trusted.job.requested` in the job-runner: run a cross-validator job on the trusted miner and
report `trusted.job.completed` (docs/crossval.md §9.2).

The trusted miner is the operator's own, reached at `TRUSTED_MINER_ADDRESS:TRUSTED_MINER_PORT` (not
through the metagraph); its hotkey is `TRUSTED_MINER_KEY`, a placeholder it does not check (it runs
in local mode), empty when unset. The job goes through the organic conversation
(`organic.run.run_on_miner`: receipts marked organic), but nothing of it is stored: no
`organic_jobs` row, no status, and the miner's protocol events are only logged. The cross-validator
decides what the outcome means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import structlog

from horde_common import s3
from horde_common.bus import HandlerContext
from horde_common.bus.messages import MinerEndpoint, TrustedJobCompleted, TrustedJobRequested
from horde_common.config import Settings, get_settings
from horde_job_runner.organic.details import JobDetailsError, job_spec
from horde_job_runner.organic.handler import OrganicRuntime
from horde_job_runner.organic.outcomes import Outcome, OutcomeKind
from horde_job_runner.organic.run import OrganicTimeouts, run_on_miner

__all__ = ["MAX_TRUSTED_TIMEOUT_S", "TrustedMiner", "handle_trusted_job_requested", "run_trusted_job"]

log = structlog.get_logger(__name__)

MAX_TRUSTED_TIMEOUT_S: Final = 600.0
"""Ceiling on the timeouts a request may ask for: the longest trusted job (generation) has 300 s,
answering 288 s; a request beyond twice that is a bug, not a reason to hold a consumer."""
TRUSTED_MINER_UID: Final = -1  # not on the chain: no uid
MAX_COMMENT_CHARS: Final = 2000
"""The comment carries the miner's failure message (its stdout and stderr included, megabytes at
worst) onto the bus and into the cross-validator's event; its head is what an operator needs."""


@dataclass(frozen=True)
class TrustedMiner:
    address: str
    port: int
    hotkey: str

    @classmethod
    def from_settings(cls, settings: Settings) -> TrustedMiner | None:
        """None unless both the address and the port are set (docs/crossval.md §7.1)."""
        if not settings.TRUSTED_MINER_ADDRESS or not settings.TRUSTED_MINER_PORT:
            return None
        return cls(
            settings.TRUSTED_MINER_ADDRESS, settings.TRUSTED_MINER_PORT, settings.TRUSTED_MINER_KEY or ""
        )


async def handle_trusted_job_requested(msg: TrustedJobRequested, ctx: HandlerContext) -> TrustedJobCompleted:
    """The bus handler's body (long-running: the job takes up to its timeout)."""
    return await run_trusted_job(
        ctx.dependency(OrganicRuntime), TrustedMiner.from_settings(get_settings()), msg
    )


def _timeout(request: dict[str, Any], key: str) -> float:
    value = request.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"request has no valid {key!r}")
    return min(float(value), MAX_TRUSTED_TIMEOUT_S)


def _expired(request: dict[str, Any], now: datetime) -> bool:
    raw = request.get("expires_at")
    if not isinstance(raw, str):
        return False
    try:
        expires = datetime.fromisoformat(raw)
    except ValueError:
        return False
    return expires.tzinfo is not None and now >= expires


def _comment(outcome: Outcome, miner: TrustedMiner) -> str:
    where = f"{miner.address}:{miner.port}"
    if outcome.kind is OutcomeKind.FINISHED:
        return f"trusted miner {where} finished"
    detail = f": {outcome.detail}" if outcome.detail else ""
    return f"trusted miner {where}: {outcome.kind}{detail}"


async def run_trusted_job(
    runtime: OrganicRuntime, miner: TrustedMiner | None, msg: TrustedJobRequested
) -> TrustedJobCompleted:
    """Run the requested job on the trusted miner; every way it can end is a `TrustedJobCompleted`."""

    def done(success: bool, comment: str) -> TrustedJobCompleted:
        # The miner (or a validation message) may echo a presigned URL of the job: masked first.
        comment = s3.scrub_text(comment[: MAX_COMMENT_CHARS * 2])[:MAX_COMMENT_CHARS]
        log.info("trusted.job", job_uuid=str(msg.job_uuid), success=success, comment=comment[:200])
        return TrustedJobCompleted(
            job_uuid=msg.job_uuid, workload_id=msg.workload_id, success=success, comment=comment
        )

    if miner is None:
        return done(False, "trusted miner is not configured (TRUSTED_MINER_ADDRESS / TRUSTED_MINER_PORT)")
    request = msg.request
    if _expired(request, runtime.clock.now()):
        return done(False, "request expired before a job-runner took it")
    try:
        timeouts = OrganicTimeouts(_timeout(request, "timeout_s"), _timeout(request, "wait_timeout_s"))
        job = request.get("job")
        spec = job_spec(str(msg.job_uuid), "", job if isinstance(job, dict) else None)
    except (ValueError, JobDetailsError) as exc:
        return done(False, f"invalid trusted job request: {exc}")
    endpoint = MinerEndpoint(
        hotkey=miner.hotkey, uid=TRUSTED_MINER_UID, address=miner.address, port=miner.port
    )

    async def on_accepted() -> None:
        return None  # no facilitator status for trusted jobs

    sleep: dict[str, Any] = {} if runtime.sleep is None else {"sleep": runtime.sleep}
    outcome, events = await run_on_miner(
        spec,
        endpoint,
        runtime.keypair,
        timeouts,
        on_accepted,
        clock=runtime.clock,
        transport_factory=runtime.transport_factory,
        transport_settings=runtime.transport_settings,
        **sleep,
    )
    for event in events:  # trusted jobs record no miner events (docs/crossval.md §9.2)
        log.info(
            "trusted.miner_event",
            job_uuid=str(msg.job_uuid),
            subtype=str(event.subtype),
            description=s3.scrub_text(event.description[: MAX_COMMENT_CHARS * 2])[:MAX_COMMENT_CHARS],
        )
    return done(outcome.kind is OutcomeKind.FINISHED, _comment(outcome, miner))
