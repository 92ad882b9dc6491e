"""Idempotent transactional consuming: one channel, one consumer per routed queue.

Consuming a message (see `Consumer._process`) is: parse -> open a DB transaction -> insert the
idempotency row `ProcessedMessage(queue, message_id)` (already there: ack and skip) -> run the
handler -> stage its returned messages in the outbox -> commit -> ack -> kick the outbox relay.
A handler error rolls back and nacks with requeue after a backoff; the quorum queue's delivery
limit dead-letters the message eventually. How each result is settled is the pure `ack.decide`.
A crash anywhere before the ack means redelivery, and the idempotency row makes the redelivery a
no-op if the transaction had committed.

A `long_running` route (a handler that runs for minutes) holds no connection while it runs: the
idempotency row is checked in a short transaction (closed at once), the handler runs with
`ctx.db_session = None` and `ctx.sessions` for short transactions of its own, then one short final
transaction inserts the idempotency row, runs the writes the handler deferred (`ctx.defer_write`)
and stages its returned messages; commit, ack. A duplicate of a message still running in this
consumer waits for it, then is skipped (as the row lock does in the normal mode). A delivery of the
same message on another consumer may run concurrently (the handler must tolerate that: the shard
handler's lease does); if it committed first, this one's returned messages are still staged unless
the outbox already has their message ids, and its deferred writes are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.ack import (
    Ack,
    Decision,
    DeliveryResult,
    Nack,
    Outcome,
    decide,
    delivery_count,
    delivery_limit,
)
from horde_common.bus.messages import BusMessage
from horde_common.bus.outbox import OutboxRelay, add_to_outbox, trace_headers
from horde_common.bus.publisher import Publisher
from horde_common.bus.router import BusRouter, HandlerContext, Route, as_messages
from horde_common.bus.topology import QUEUES, declare_exchanges, declare_queue
from horde_common.bus.tracing import consumer_span
from horde_common.db.models.bus import OutboxMessage, ProcessedMessage

log = structlog.get_logger(__name__)

# Called as listener(logical queue, AMQP message_id, outcome) after every settlement (metrics, tests).
SettleListener = Callable[[str, str | None, Outcome], None]


class Consumer:
    """Consumes the routed queues on its own channel and settles every delivery.

    `session_factory=None` makes a pure consumer: handlers run without a transaction or idempotency
    row, and their returned messages are published directly (through `publisher`) before the ack.
    """

    def __init__(
        self,
        *,
        instance_id: str,
        publisher: Publisher,
        relay: OutboxRelay | None,
        session_factory: async_sessionmaker[AsyncSession] | None,
        prefetch: int,
        settle_timeout_s: float,
        retry_delay_s: float,
        max_retry_delay_s: float,
    ) -> None:
        self.instance_id = instance_id
        self._publisher = publisher
        self._relay = relay
        self._session_factory = session_factory
        self._prefetch = prefetch
        self._settle_timeout_s = settle_timeout_s
        self._retry_delay_s = retry_delay_s
        self._max_retry_delay_s = max_retry_delay_s

        self._channel: AbstractChannel | None = None
        self.consumers: list[tuple[AbstractQueue, str]] = []
        self.inflight: set[asyncio.Task[Any]] = set()
        self.stopping = asyncio.Event()
        self.settle_listeners: list[SettleListener] = []
        # Long-running deliveries in progress here, by (queue, message id): a duplicate waits on it.
        self._long_running: dict[tuple[str, uuid.UUID], asyncio.Event] = {}

    async def start(self, connection: AbstractRobustConnection, router: BusRouter) -> None:
        """Open the consume channel and consume every queue of `router`."""
        self._channel = await connection.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)
        exchange = await declare_exchanges(self._channel)
        for route in router.routes.values():
            queue = await declare_queue(self._channel, exchange, QUEUES[route.queue], self.instance_id)
            tag = await queue.consume(self._on_message(route, queue.name))
            self.consumers.append((queue, tag))

    def _on_message(self, route: Route, queue_name: str) -> Any:
        quorum = QUEUES[route.queue].quorum
        inflight = self.inflight
        process = self._process

        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            assert task is not None
            inflight.add(task)
            try:
                await process(route, queue_name, message, quorum)
            finally:
                inflight.discard(task)

        return on_message

    async def _process(
        self, route: Route, queue_name: str, message: AbstractIncomingMessage, quorum: bool
    ) -> None:
        headers: dict[str, Any] = dict(message.headers or {})
        try:
            msg = route.model.model_validate_json(message.body)
        except (ValidationError, ValueError) as exc:
            # Redelivering cannot fix a body: straight to the dead-letter queue, loudly.
            log.error(
                "bus.unparseable_message",
                queue=route.queue,
                routing_key=message.routing_key,
                message_id=message.message_id,
                error=str(exc)[:1000],
            )
            await self._settle(route.queue, message, decide("unparseable", delivery=1, quorum=quorum))
            return

        limit = delivery_limit(quorum)
        delivery = delivery_count(quorum, headers, message.redelivered)
        ctx = HandlerContext(
            queue=route.queue,
            message_id=msg.message_id,
            redelivered=bool(message.redelivered),
            delivery_count=delivery,
            headers=headers,
        )
        with consumer_span(route.queue, queue_name, msg.message_id, headers):
            try:
                result: DeliveryResult = await self._handle(route, queue_name, msg, ctx)
            except Exception:
                log.exception(
                    "bus.handler_failed",
                    queue=route.queue,
                    message_id=str(msg.message_id),
                    delivery=delivery,
                    max_deliveries=limit,
                )
                decision = decide(
                    "failed",
                    delivery=delivery,
                    quorum=quorum,
                    stopping=self.stopping.is_set(),
                    retry_delay_s=self._retry_delay_s,
                    max_retry_delay_s=self._max_retry_delay_s,
                )
                if isinstance(decision, Nack) and decision.backoff_s > 0:
                    # The backoff ends early when the service starts shutting down.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), decision.backoff_s)
                await self._settle(route.queue, message, decision)
                return
        await self._settle(route.queue, message, decide(result, delivery=delivery, quorum=quorum))
        if result == "staged" and self._relay is not None:
            self._relay.kick()

    async def _handle(
        self, route: Route, queue_name: str, msg: BusMessage, ctx: HandlerContext
    ) -> DeliveryResult:
        """Run the handler in its transaction (idempotency row + handler writes + outbox rows)."""
        if self._session_factory is None:
            out = as_messages(await route.fn(msg, ctx))
            if out:  # an empty gather still costs a future per message
                await asyncio.gather(*(self._publisher.publish(m) for m in out))
            return "processed"
        if route.long_running:
            return await self._handle_long_running(route, queue_name, msg, ctx, self._session_factory)
        async with self._session_factory() as session, session.begin():
            first = await session.scalar(
                pg_insert(ProcessedMessage)
                .values(queue=queue_name, message_id=msg.message_id)
                .on_conflict_do_nothing()
                .returning(ProcessedMessage.message_id)
            )
            if first is None:  # committed by an earlier delivery whose ack was lost
                log.info("bus.duplicate_skipped", queue=route.queue, message_id=str(msg.message_id))
                return "duplicate"
            ctx.db_session = session
            out = as_messages(await route.fn(msg, ctx))
            await ctx.run_deferred_writes(session)
            for m in out:
                await add_to_outbox(session, m)
        return "staged" if out else "processed"

    async def _handle_long_running(
        self,
        route: Route,
        queue_name: str,
        msg: BusMessage,
        ctx: HandlerContext,
        sessions: async_sessionmaker[AsyncSession],
    ) -> DeliveryResult:
        """Run a `long_running` handler with no transaction held (see the module docstring)."""
        key = (queue_name, msg.message_id)
        while (running := self._long_running.get(key)) is not None:
            await running.wait()  # the same message is being handled here: its outcome decides ours
        done = self._long_running[key] = asyncio.Event()
        try:
            async with sessions() as session:  # closed (rolled back, connection returned) at once
                seen = await session.scalar(
                    select(ProcessedMessage.message_id).where(
                        ProcessedMessage.queue == queue_name, ProcessedMessage.message_id == msg.message_id
                    )
                )
            if seen is not None:
                log.info("bus.duplicate_skipped", queue=route.queue, message_id=str(msg.message_id))
                return "duplicate"
            ctx.db_session = None
            ctx.sessions = sessions
            out = as_messages(await route.fn(msg, ctx))
            async with sessions() as session, session.begin():
                first = await session.scalar(
                    pg_insert(ProcessedMessage)
                    .values(queue=queue_name, message_id=msg.message_id)
                    .on_conflict_do_nothing()
                    .returning(ProcessedMessage.message_id)
                )
                if first is not None:
                    await ctx.run_deferred_writes(session)
                    for m in out:
                        await add_to_outbox(session, m)
                    return "staged" if out else "processed"
                # Another consumer's delivery of this message committed while this one ran: keep
                # what this run produced that the outbox does not already hold.
                staged = await _stage_missing(session, out)
            log.warning(
                "bus.long_running_concurrent_delivery",
                queue=route.queue,
                message_id=str(msg.message_id),
                staged=staged,
                dropped_writes=len(ctx.deferred_writes),
            )
            return "staged" if staged else "duplicate"
        finally:
            del self._long_running[key]
            done.set()

    async def _settle(self, queue: str, message: AbstractIncomingMessage, decision: Decision) -> None:
        """Ack/nack/reject, tolerating a channel that died meanwhile (the broker then redelivers)."""
        outcome: Outcome = decision.outcome
        try:
            if isinstance(decision, Ack):
                settle = message.ack()
            elif isinstance(decision, Nack):
                settle = message.nack(requeue=decision.requeue)
            else:
                settle = message.reject(requeue=False)
            async with asyncio.timeout(self._settle_timeout_s):  # no extra task, unlike wait_for
                await settle
        except Exception as exc:
            log.warning(
                "bus.settle_failed", message_id=message.message_id, error=f"{type(exc).__name__}: {exc}"
            )
            outcome = "lost"
        for listener in self.settle_listeners:
            listener(queue, message.message_id, outcome)

    async def stop(self, grace_s: float, is_connected: Callable[[], bool], cancel_timeout_s: float) -> None:
        """Stop consuming, let in-flight handlers finish for up to `grace_s`, cancel the rest.

        Cancelled handlers roll back their transactions; their messages, never acked, are requeued
        by RabbitMQ when the channel closes.
        """
        self.stopping.set()
        for queue, tag in self.consumers:
            if is_connected():  # a robust channel would otherwise wait for a reconnect forever
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(queue.cancel(tag), cancel_timeout_s)
        self.consumers.clear()
        if self.inflight:
            _, pending = await asyncio.wait(set(self.inflight), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def detach(self) -> None:
        """Forget the consume channel (the broker closed the connection)."""
        self._channel = None


async def _stage_missing(session: AsyncSession, msgs: Sequence[BusMessage]) -> int:
    """Stage the messages whose ids the outbox does not hold yet; return how many were staged."""
    if not msgs:
        return 0
    rows = await session.scalars(
        pg_insert(OutboxMessage)
        .values(
            [
                {
                    "message_id": m.message_id,
                    "routing_key": m.ROUTING_KEY,
                    "body": m.model_dump(mode="json"),
                    "headers": trace_headers(),
                    "attempts": 0,
                }
                for m in msgs
            ]
        )
        .on_conflict_do_nothing(index_elements=[OutboxMessage.message_id])
        .returning(OutboxMessage.message_id)
    )
    return len(rows.all())


__all__ = ["Consumer", "SettleListener"]
