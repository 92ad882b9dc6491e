"""Transactional outbox: messages are rows committed with the writes that caused them, then relayed.

Guarantees, together with `Broker`:
- no message without its row: a message is only published after its row is committed;
- no row without its message: the relay retries an unpublished row until the broker confirms it.
The price is at-least-once delivery (a relay that dies between confirm and commit publishes again),
which consumers absorb by deduplicating on `message_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from opentelemetry import propagate
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.messages import BusMessage
from horde_common.db.models.bus import OutboxMessage

log = structlog.get_logger(__name__)


class RawPublisher(Protocol):
    async def publish_raw(
        self, routing_key: str, body: bytes, *, message_id: uuid.UUID, headers: Mapping[str, Any]
    ) -> None: ...


def trace_headers(headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`headers` plus the current OpenTelemetry context (traceparent/tracestate/baggage)."""
    carrier: dict[str, Any] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


async def add_to_outbox(
    session: AsyncSession, msg: BusMessage, headers: Mapping[str, Any] | None = None
) -> None:
    """Stage `msg` in the caller's transaction; the relay publishes it once that transaction commits.

    The trace context is captured now, so the consumer's span is a child of the span that decided to
    send the message, not of the relay that happened to publish it.
    """
    session.add(
        OutboxMessage(
            message_id=msg.message_id,
            routing_key=msg.ROUTING_KEY,
            body=msg.model_dump(mode="json"),
            headers=trace_headers(headers),
            attempts=0,
        )
    )


class OutboxRelay:
    """Publishes committed, unpublished outbox rows; several relays (replicas) can run concurrently."""

    def __init__(
        self,
        publisher: RawPublisher,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
    ) -> None:
        self._publisher = publisher
        self._session_factory = session_factory
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()

    def kick(self) -> None:
        """Publish soon (called after a commit that added rows) instead of waiting for the next poll."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows; return how many were published.

        Rows are locked `FOR UPDATE SKIP LOCKED` so concurrent relays split the work instead of
        publishing the same row twice; they are published concurrently (confirms are pipelined)
        and marked in the same transaction that locked them.
        """
        async with self._session_factory() as session, session.begin():
            rows = (
                await session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.published_at.is_(None))
                    # Rows that keep failing go behind fresh ones instead of starving them.
                    .order_by(OutboxMessage.attempts, OutboxMessage.id)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            results = await asyncio.gather(*(self._publish(row) for row in rows), return_exceptions=True)
            now = datetime.now(UTC)
            published = 0
            for row, result in zip(rows, results, strict=True):
                if isinstance(result, BaseException):
                    row.attempts = (row.attempts or 0) + 1
                    row.last_error = f"{type(result).__name__}: {result}"[:2000]
                    log.warning("outbox.publish_failed", message_id=str(row.message_id), error=row.last_error)
                else:
                    row.published_at = now
                    published += 1
            return published

    async def _publish(self, row: OutboxMessage) -> None:
        await self._publisher.publish_raw(
            row.routing_key,
            json.dumps(row.body, separators=(",", ":")).encode(),
            message_id=row.message_id,
            headers=row.headers or {},
        )

    async def run(self, stop_event: asyncio.Event) -> None:
        """Relay until `stop_event` is set: on every `kick()`, and every `poll_interval_s` regardless."""
        stopper = asyncio.create_task(stop_event.wait())
        stopper.add_done_callback(lambda _: self._wake.set())
        try:
            while not stop_event.is_set():
                self._wake.clear()
                try:
                    published = await self.publish_pending()
                except Exception as exc:  # DB or broker down: keep the rows, retry on the next tick
                    log.warning("outbox.relay_error", error=f"{type(exc).__name__}: {exc}")
                    published = 0
                if published >= self._batch_size:
                    continue  # more rows are probably waiting
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
        finally:
            stopper.cancel()
