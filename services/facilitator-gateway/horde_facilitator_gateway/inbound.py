"""What the gateway does with each event of the facilitator session (docs/organic.md §1.7).

A job request is stored in its own task so reading never waits for the database; a V2 request the
session rejected for its signature is dropped with a log line and no status update, as the original
did (§1.6); invalid and unknown frames are logged and counted, and the connection stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Final

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.protocol.facilitator import (
    Authenticated,
    AuthFailed,
    IgnoredFrame,
    InvalidFrame,
    JobRequested,
    LinkEvent,
    ResponseReceived,
    UnknownMessage,
    V2JobRejected,
)
from horde_facilitator_gateway.jobs import AnyJobRequest, StoreOutcome, store_job_request
from horde_facilitator_gateway.metrics import LinkMetrics
from horde_facilitator_gateway.stats import LinkStats

log = structlog.get_logger(__name__)

DETAIL_CHARS: Final = 300
"""Log lines quote at most this much of a hostile frame's error detail."""
CLOSE_GRACE_S: Final = 10.0
"""At stop, jobs being stored get this long (one short transaction each) before being cancelled."""


class InboundHandler:
    """Logs, counts and acts on session events; owns the tasks that store job requests."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        metrics: LinkMetrics,
        stats: LinkStats,
        on_stored: Callable[[], None] | None,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._stats = stats
        self._on_stored = on_stored
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_auth_error: str | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def handle(self, events: Iterable[LinkEvent]) -> None:
        for event in events:
            self._handle(event)

    def _handle(self, event: LinkEvent) -> None:
        match event:
            case Authenticated():
                self.last_auth_error = None
                log.info("facilitator.authenticated")
            case AuthFailed(reason=reason, errors=errors):
                detail = "; ".join(f"{e.type}: {e.msg}" for e in errors)[:DETAIL_CHARS]
                self.last_auth_error = f"{reason}: {detail}" if detail else reason
            case ResponseReceived(response=response):
                if response.status != "success":
                    errors = [f"{e.type}: {e.msg}" for e in response.errors]
                    log.warning("facilitator.error_response", errors=str(errors)[:DETAIL_CHARS])
            case JobRequested(request=request):
                task = asyncio.create_task(self._store(request), name=f"store-job-{request.uuid[:64]}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            case V2JobRejected(request=request, error=error):
                self._count_job("v2_rejected")
                log.warning(
                    "facilitator.v2_request_dropped",
                    job_uuid=request.uuid,
                    kind=str(error.kind),
                    signatory=error.signatory,
                    detail=error.detail[:DETAIL_CHARS],
                )
            case InvalidFrame(reason=reason, detail=detail, message_type=message_type):
                self._invalid()
                log.warning(
                    "facilitator.unsupported_frame",
                    reason=str(reason),
                    message_type=message_type,
                    detail=detail[:DETAIL_CHARS],
                )
            case UnknownMessage(message_type=message_type):
                self._invalid()
                log.warning("facilitator.unknown_message", message_type=message_type)
            case IgnoredFrame(state=state):
                log.debug("facilitator.frame_ignored", state=str(state))

    def _invalid(self) -> None:
        self._stats.frames_invalid += 1
        self._metrics.frame("invalid")

    def _count_job(self, outcome: str) -> None:
        self._stats.jobs[outcome] = self._stats.jobs.get(outcome, 0) + 1
        self._metrics.job(outcome)

    async def _store(self, request: AnyJobRequest) -> None:
        try:
            outcome = str(await store_job_request(self._sessions, request))
        except Exception as exc:
            outcome = "store_failed"
            log.error(
                "facilitator.job_store_failed", job_uuid=request.uuid, error=f"{type(exc).__name__}: {exc}"
            )
        self._count_job(outcome)
        if outcome == StoreOutcome.STORED and self._on_stored is not None:
            self._on_stored()
        log.info(
            "facilitator.job_request",
            job_uuid=request.uuid,
            message_type=request.message_type,
            executor_class=str(request.executor_class),
            outcome=outcome,
        )

    async def close(self) -> None:
        """Wait (bounded) for jobs being stored, then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=CLOSE_GRACE_S)
        for task in pending:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*pending, return_exceptions=True)
