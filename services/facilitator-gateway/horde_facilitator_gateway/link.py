"""The facilitator WebSocket link: a thin I/O adapter around the sans-I/O `FacilitatorSession`
(docs/organic.md §1 and "Facilitator gateway").

The session decides what every frame means and what goes out; this module owns the socket, the
clock and the retries: it connects with the version headers (§1.2), authenticates (§1.3), sends a
heartbeat when the session says one is due (§1.8), stores job requests (`jobs.py`) and forwards
status updates. A link that cannot connect retries for ever with `backoff.connect_retry_delay`
(§1.10), one log line per attempt; it never takes the service down, and `/readyz` does not depend on
it: the facilitator is a peer, not a dependency. Every network wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from horde_common.bus.messages import OrganicJobStatus
from horde_common.protocol.facilitator import (
    MAX_FRAME_BYTES,
    FacilitatorSession,
    V0AuthenticationRequest,
    parse_signers,
)
from horde_common.service import ServiceContext
from horde_facilitator_gateway.inbound import InboundHandler
from horde_facilitator_gateway.ledger import StatusLedger
from horde_facilitator_gateway.link_config import (
    CLOSE_TIMEOUT_S,
    PING_INTERVAL_S,
    LinkConfig,
    version_headers,
)
from horde_facilitator_gateway.metrics import LinkMetrics
from horde_facilitator_gateway.outbound import FINAL_STATUSES, LinkUnavailable, PendingUpdate, StatusQueue
from horde_facilitator_gateway.stats import LinkStats

log = structlog.get_logger(__name__)

__all__ = ["FacilitatorLink", "LinkConfig", "LinkUnavailable", "facilitator_link", "link_loop"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class FacilitatorLink:
    """One service instance's facilitator connection: `run` keeps it up, `send_status` uses it."""

    def __init__(
        self,
        config: LinkConfig,
        auth: V0AuthenticationRequest,
        sessions: async_sessionmaker[AsyncSession],
        *,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.clock: Callable[[], datetime] = _utcnow
        self.metrics = LinkMetrics()
        self.stats = LinkStats()
        self._auth = auth
        self._inbound = InboundHandler(sessions, self.metrics, self.stats, on_stored)
        self._session: FacilitatorSession | None = None
        self._ws: ClientConnection | None = None
        self._ready = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._statuses = StatusQueue()
        self._ledger = StatusLedger(sessions)
        self._timers = asyncio.Event()

    @property
    def authenticated(self) -> bool:
        return self._ready.is_set()

    def check_timers(self) -> None:
        """Re-check the heartbeat timer now (after the clock was moved, in tests)."""
        self._timers.set()

    def debug_state(self) -> dict[str, Any]:
        state = asdict(self.stats)
        state["uri"] = self.config.uri
        state["authenticated"] = self.authenticated
        due = self._session.next_heartbeat_at if self._session is not None else None
        state["next_heartbeat_at"] = due.isoformat() if due is not None else None
        state["jobs_in_flight"] = self._inbound.in_flight
        state["status_pending"] = len(self._statuses)
        state["status_blocked_jobs"] = self._statuses.blocked_jobs
        return state

    # ------------------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect, until `stop` is set. Never raises for the link's sake."""
        failures = 0
        while not stop.is_set():
            try:
                outcome = await self._attempt(stop)
            except Exception as exc:  # a bug here must not take the service down
                log.exception("facilitator.link_error")
                self.stats.last_error, outcome = _describe(exc), "error"
            if outcome == "stopped":
                break
            if outcome == "ended":  # an established connection is replaced at once (§1.10)
                failures = 0
                continue
            failures += 1
            delay = self.config.retry_delay(failures, self.config.rng)
            self.stats.state, self.stats.next_retry_in_s = "waiting", round(delay, 3)
            log.warning(
                "facilitator.link_down",
                outcome=outcome,
                error=self.stats.last_error,
                attempt=failures,
                retry_in_s=round(delay, 3),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        self.stats.state = "stopped"

    async def close(self) -> None:
        """Let stored-job tasks finish (bounded) at service stop."""
        self._ready.clear()
        await self._inbound.close()

    async def _attempt(self, stop: asyncio.Event) -> str:
        """`_connect_once`, given up when `stop` is set (a connect or an authentication can take
        seconds: the service's shutdown does not wait for them)."""
        attempt = asyncio.create_task(self._connect_once(stop), name="facilitator-connection")
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await attempt
        return "stopped" if attempt.cancelled() else attempt.result()

    async def _connect_once(self, stop: asyncio.Event) -> str:
        """One connection: "connect_failed", "auth_failed", "ended" or "stopped"."""
        self.stats.state, self.stats.next_retry_in_s = "connecting", None
        self.stats.connect_attempts += 1
        try:
            ws = await asyncio.wait_for(
                connect(
                    self.config.uri,
                    additional_headers=self.config.headers,
                    open_timeout=self.config.open_timeout_s,
                    ping_interval=PING_INTERVAL_S,
                    ping_timeout=PING_INTERVAL_S,
                    close_timeout=CLOSE_TIMEOUT_S,
                    max_size=MAX_FRAME_BYTES,
                    proxy=None,
                ),
                self.config.open_timeout_s + 1.0,
            )
        except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
            self.stats.last_error = _describe(exc)
            self.metrics.connect("connect_failed")
            return "connect_failed"
        try:
            return await self._serve(ws, stop)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT_S + 1.0)

    async def _serve(self, ws: ClientConnection, stop: asyncio.Event) -> str:
        session = FacilitatorSession(self._auth, self.config.signers)
        self.stats.state = "authenticating"
        try:
            await self._write(ws, session.start(self.clock()))
            frame = await asyncio.wait_for(ws.recv(), self.config.auth_timeout_s)
            self._frame_in()
            self._inbound.handle(session.receive(frame, self.clock()))
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            self.stats.last_error = f"no answer to authentication: {_describe(exc)}"
        if not session.authenticated:
            session.connection_closed()
            if self._inbound.last_auth_error:
                self.stats.last_error = self._inbound.last_auth_error
            self.stats.auth_failures += 1
            self.metrics.connect("auth_failed")
            return "auth_failed"
        self.metrics.connect("authenticated")
        self._session, self._ws = session, ws
        self._set_up(True)
        drain = asyncio.create_task(self._drain(session, ws), name="facilitator-status-drain")
        try:
            await self._read_loop(session, ws, stop)
            return "stopped"
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            self.stats.last_error = _describe(exc)
            self.stats.ended_connections += 1
            self.metrics.connect("ended")
            log.warning("facilitator.connection_ended", error=self.stats.last_error)
            return "ended"
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            self._set_up(False)
            session.connection_closed()
            self._session, self._ws = None, None

    def _set_up(self, up: bool) -> None:
        if up == self._ready.is_set():
            return
        if up:
            self._ready.set()
            self.stats.state, self.stats.connected_since = "ready", self.clock().isoformat()
            self.stats.authenticated_connections += 1
        else:
            self._ready.clear()
            self.stats.connected_since = None
        self.metrics.link_up.add(1 if up else -1)

    async def _read_loop(
        self, session: FacilitatorSession, ws: ClientConnection, stop: asyncio.Event
    ) -> None:
        """Read frames in order and send heartbeats when due, until `stop` or the socket ends."""
        recv: asyncio.Future[Any] | None = None
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._timers.clear()
                heartbeat = session.due_heartbeat(self.clock())
                if heartbeat is not None:
                    await self._write(ws, heartbeat)
                    self.stats.heartbeats += 1
                if recv is None:
                    recv = asyncio.ensure_future(ws.recv())
                timers = asyncio.ensure_future(self._timers.wait())
                due = session.next_heartbeat_at
                timeout = max(0.0, (due - self.clock()).total_seconds()) if due is not None else None
                try:
                    done, _ = await asyncio.wait(
                        {recv, stopped, timers}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    timers.cancel()
                if recv in done:
                    frame, recv = recv.result(), None  # ConnectionClosed ends the connection
                    self._frame_in()
                    self._inbound.handle(session.receive(frame, self.clock()))
        finally:
            stopped.cancel()
            if recv is not None:
                recv.cancel()

    def _frame_in(self) -> None:
        self.stats.frames_in += 1
        self.metrics.frame("in")

    async def _write(self, ws: ClientConnection, frame: str) -> None:
        """Send one text frame (docs/organic.md §1.2); a socket that fails or stalls is aborted, so
        the reader sees it end and the link reconnects."""
        try:
            async with self._write_lock:
                await asyncio.wait_for(ws.send(frame), self.config.send_timeout_s)
        except (ConnectionClosed, OSError, TimeoutError):
            self._ready.clear()
            ws.transport.abort()
            raise
        self.stats.frames_out += 1
        self.metrics.frame("out")

    # ---------------------------------------------------------------------------- status out

    async def send_status(self, msg: OrganicJobStatus) -> str:
        """Write `msg` as a `V0JobStatusUpdate` on an authenticated connection and return "sent",
        or raise `LinkUnavailable` after `status_wait_s` so that its bus message is retried (order
        and retries: `outbound.StatusQueue`). Not written (`ledger.py`): a message an earlier
        delivery wrote ("duplicate"), an update that would move its job back ("stale": its `seq`
        not above the job's highest written, or without `seq` older than a final that went out)."""
        checked = await self._ledger.check_counting(msg)
        highest = checked.highest
        outcome: str = checked.outcome
        if outcome == "new":
            write_s = self.config.send_timeout_s + self.config.record_timeout_s  # a begun write, recorded
            try:
                written = await self._statuses.submit(msg, self.config.status_wait_s, write_s, highest)
            except LinkUnavailable:
                self.stats.status_link_down += 1
                self.metrics.status_update(msg.status, "link_down")
                raise
            outcome = "sent" if written else "stale"
        self.stats.status[outcome] = self.stats.status.get(outcome, 0) + 1
        self.metrics.status_update(msg.status, outcome)
        if outcome != "sent":
            log.info(
                "facilitator.status_not_sent", outcome=outcome, job_uuid=str(msg.job_uuid), status=msg.status
            )
        elif msg.status in FINAL_STATUSES and checked.finals > 0:
            # Counted (never prevented) from the check's own query: one final per V2 attempt is expected.
            self.stats.status_repeated_finals += 1
            log.info(
                "facilitator.final_status_repeated", job_uuid=str(msg.job_uuid), finals=checked.finals + 1
            )
        return outcome

    async def _record_sent(self, update: PendingUpdate) -> None:
        """Commit that `update` was written before anything else goes out, so a kill leaves at
        most this one frame unrecorded (`ledger.py`). A failure is logged: the frame is out, and
        the consumer's idempotency row still deduplicates unless it fails too."""
        record = asyncio.ensure_future(
            asyncio.wait_for(
                self._ledger.record(
                    update.message_id, update.job_uuid, update.status.value, update.sent_at, update.seq
                ),
                self.config.record_timeout_s,
            )
        )
        record.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            await asyncio.shield(record)  # the connection ending now must not lose the record
        except asyncio.CancelledError:
            self._statuses.written(update)
            raise
        except Exception as exc:
            self.stats.status_record_failed += 1
            log.error("facilitator.status_record_failed", job_uuid=str(update.job_uuid), error=_describe(exc))

    async def _drain(self, session: FacilitatorSession, ws: ClientConnection) -> None:
        """Write pending status updates, oldest first, while this connection is authenticated. A
        failed write aborts the socket (see `_write`), so the reader ends the connection."""
        while True:
            update = await self._statuses.next()
            frame = session.status_update(
                str(update.job_uuid),
                update.status,
                comment=update.comment,
                miner_response=update.miner_response,
            )
            if not isinstance(frame, str):  # the session closed meanwhile
                self._statuses.put_back(update)
                return
            try:
                await self._write(ws, frame)
            except (ConnectionClosed, OSError, TimeoutError):
                self._statuses.put_back(update)
                return
            except asyncio.CancelledError:  # the connection ended mid-write: retry on the next one
                self._statuses.put_back(update)
                raise
            await self._record_sent(update)
            self._statuses.written(update)


@contextlib.asynccontextmanager
async def facilitator_link(ctx: ServiceContext) -> AsyncIterator[FacilitatorLink]:
    """`Dependency` opener: one link per service instance, built from the settings and the hotkey."""
    if ctx.hotkey is None:
        raise RuntimeError("the facilitator gateway authenticates with the hotkey: set needs_hotkey")
    config = LinkConfig(
        uri=ctx.settings.FACILITATOR_URI,
        signers=parse_signers(ctx.settings.FACILITATOR_V2_SIGNERS),
        headers=version_headers(ctx.settings),
    )
    relay = ctx.broker.relay if ctx.broker is not None else None
    link = FacilitatorLink(
        config,
        V0AuthenticationRequest.from_keypair(ctx.hotkey),
        ctx.sessions,
        on_stored=relay.kick if relay is not None else None,
    )
    try:
        yield link
    finally:
        await link.close()


async def link_loop(ctx: ServiceContext) -> None:
    """The service loop that keeps the link up until the service stops."""
    await ctx.dependency(FacilitatorLink).run(ctx.stop_event)
