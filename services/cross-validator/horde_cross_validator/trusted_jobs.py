"""A job on the trusted miner, through the bus (docs/crossval.md §9.2).

The loop publishes `trusted.job.requested` and waits for its `trusted.job.completed`. That answer
may be consumed by any cross-validator replica, so the handler does not hand it over in memory: it
sends a PostgreSQL `NOTIFY` in its own transaction (delivered when that commits), and the waiting
loop `LISTEN`s on a connection of its own, opened before the request goes out, so no answer can
slip past it. An answer for a job nobody waits for any more (timed out, replica gone) is dropped.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from horde_common.bus.messages import TrustedJobCompleted, TrustedJobRequested
from horde_cross_validator.runtime import CrossValidatorRuntime

__all__ = [
    "CHANNEL",
    "LLM_EXECUTOR_CLASS",
    "TrustedJobKind",
    "TrustedOutcome",
    "job_request",
    "notify_completed",
    "run_trusted_job",
]

log = structlog.get_logger(__name__)

CHANNEL: Final = "horde_trusted_job_completed"
LLM_EXECUTOR_CLASS: Final = "always_on.llm.a6000"
"""Both prompt jobs need the A6000 class the trusted miner must offer."""
MAX_COMMENT_CHARS: Final = 500
"""A NOTIFY payload is limited to 8000 bytes and JSON spells a non-ASCII character as up to 12
(`\\ud83d\\ude00`): 500 characters fit whatever they are. The comment is for operators; its head
is enough."""


class TrustedJobKind:
    GENERATION: Final = "prompt_generation"
    ANSWERING: Final = "prompt_answering"


@dataclass(frozen=True, slots=True)
class TrustedOutcome:
    job_uuid: uuid.UUID
    success: bool
    comment: str


def job_request(
    *,
    docker_image: str,
    args: list[str],
    volume: dict[str, Any] | None,
    output_upload: dict[str, Any] | None,
) -> dict[str, Any]:
    """The job as the job-runner's organic path reads it (a facilitator V1 request; docs/crossval.md §9.2)."""
    return {
        "message_type": "V1JobRequest",
        "executor_class": LLM_EXECUTOR_CLASS,
        "docker_image": docker_image,
        "raw_script": None,
        "args": args,
        "env": {},
        "use_gpu": True,  # preset nvidia_all
        "volume": volume,
        "output_upload": output_upload,
    }


async def notify_completed(session: AsyncSession, msg: TrustedJobCompleted) -> None:
    """The handler's half: tell whichever replica waits (delivered when the handler's transaction commits)."""
    payload = {
        "job_uuid": str(msg.job_uuid),
        "success": msg.success,
        "comment": (msg.comment or "")[:MAX_COMMENT_CHARS],
    }
    await session.execute(
        text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": json.dumps(payload)}
    )


def _engine(runtime: CrossValidatorRuntime) -> AsyncEngine:
    bind = runtime.sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        raise RuntimeError("the session factory has no engine")
    return bind


async def run_trusted_job(
    runtime: CrossValidatorRuntime,
    *,
    kind: str,
    workload_id: str,
    job: dict[str, Any],
    timeout_s: float,
    wait_timeout_s: float,
) -> TrustedOutcome:
    """Request the job and wait for its outcome, at most its timeout plus the bus grace.

    Raises only when the request cannot be published (the caller records the failure).
    """
    job_uuid = uuid.uuid4()
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[TrustedOutcome] = loop.create_future()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            return
        if not isinstance(data, dict) or data.get("job_uuid") != str(job_uuid) or answer.done():
            return
        answer.set_result(TrustedOutcome(job_uuid, bool(data.get("success")), str(data.get("comment") or "")))

    wait_s = timeout_s + runtime.outcome_grace_s
    request = {
        "kind": kind,
        "job": job,
        "timeout_s": timeout_s,
        "wait_timeout_s": wait_timeout_s,
        # A request still queued after this (no job-runner was running) is not worth running.
        "expires_at": (runtime.now() + timedelta(seconds=wait_s)).isoformat(),
    }
    async with _engine(runtime).connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        raw = (await conn.get_raw_connection()).driver_connection
        if raw is None:
            raise RuntimeError("no asyncpg connection to listen on")
        await raw.add_listener(CHANNEL, on_notify)
        try:
            await runtime.publish(
                TrustedJobRequested(job_uuid=job_uuid, workload_id=workload_id, request=request)
            )
            log.info("trusted_job.requested", job_uuid=str(job_uuid), kind=kind, workload_id=workload_id)
            try:
                return await asyncio.wait_for(answer, wait_s)
            except TimeoutError:
                return TrustedOutcome(job_uuid, False, f"no outcome within {wait_s:g} s")
        finally:
            await raw.remove_listener(CHANNEL, on_notify)
