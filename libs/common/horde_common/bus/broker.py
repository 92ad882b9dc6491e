"""The bus client of a service: confirmed persistent publishing and idempotent transactional consuming.

Consuming a message (see `Broker._process`) is: parse -> open a DB transaction -> insert the
idempotency row `ProcessedMessage(queue, message_id)` (already there: ack and skip) -> run the
handler -> stage its returned messages in the outbox -> commit -> ack -> kick the outbox relay.
A handler error rolls back and nacks with requeue after a backoff; the quorum queue's delivery
limit dead-letters the message eventually. A crash anywhere before the ack means redelivery, and
the idempotency row makes the redelivery a no-op if the transaction had committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
)
from aiormq import spec as amqp_spec
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus._transport import CoalescingRobustConnection
from horde_common.bus.messages import BusMessage
from horde_common.bus.outbox import OutboxRelay, add_to_outbox, trace_headers
from horde_common.bus.router import BusRouter, HandlerContext, Route, as_messages
from horde_common.bus.topology import (
    BROADCAST_ROUTING_KEYS,
    CLASSIC_MAX_DELIVERIES,
    EXCHANGE,
    MAX_DELIVERIES,
    QUEUES,
    declare_exchanges,
    declare_queue,
    declare_topology,
    default_instance_id,
)
from horde_common.bus.tracing import consumer_span, producer_span, tracing_enabled
from horde_common.db.models.bus import ProcessedMessage

log = structlog.get_logger(__name__)
_PERSISTENT = int(DeliveryMode.PERSISTENT)


# What became of a delivery: acked after commit ("processed"; "staged" = it also wrote outbox rows),
# acked as an already-processed "duplicate", nacked for a later "requeued" attempt, "dead-lettered",
# or "lost" (the channel died before the ack/nack reached RabbitMQ, which will redeliver it).
Outcome = Literal["processed", "staged", "duplicate", "requeued", "dead-lettered", "lost"]
# Called as listener(logical queue, AMQP message_id, outcome) after every settlement (metrics, tests).
SettleListener = Callable[[str, str | None, Outcome], None]


class Broker:
    """One AMQP connection per service: a confirm-mode channel to publish, one channel to consume.

    `session_factory=None` makes a pure consumer/publisher: handlers run without a transaction or
    idempotency row, and their returned messages are published directly before the ack.
    """

    def __init__(
        self,
        amqp_url: str,
        *,
        service: str,
        session_factory: async_sessionmaker[AsyncSession] | None = None,
        prefetch: int = 32,
        instance_id: str | None = None,
        connect_timeout_s: float = 15.0,
        publish_timeout_s: float = 15.0,
        retry_delay_s: float = 0.5,
        max_retry_delay_s: float = 10.0,
    ) -> None:
        self.amqp_url = amqp_url
        self.service = service
        self.instance_id = instance_id or default_instance_id()
        self._session_factory = session_factory
        self._prefetch = prefetch
        self._connect_timeout_s = connect_timeout_s
        self._publish_timeout_s = publish_timeout_s
        self._retry_delay_s = retry_delay_s
        self._max_retry_delay_s = max_retry_delay_s

        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._consume_channel: AbstractChannel | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._inflight: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self.relay: OutboxRelay | None = (
            OutboxRelay(self, session_factory) if session_factory is not None else None
        )
        self._relay_stop = asyncio.Event()
        self._relay_task: asyncio.Task[None] | None = None
        self.settle_listeners: list[SettleListener] = []

    # --- connection -------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (reconnecting automatically afterwards) and declare the shared topology.

        Every durable queue is declared by every service, so a message published before its
        consumer ever started is queued, not dropped as unroutable.
        """
        if self._connection is not None:
            return
        connection = await asyncio.wait_for(
            aio_pika.connect_robust(
                self.amqp_url,
                connection_class=CoalescingRobustConnection,
                timeout=self._connect_timeout_s,
                client_properties={"connection_name": f"{self.service}/{self.instance_id}"},
            ),
            self._connect_timeout_s,
        )
        self._connection = connection
        self._publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_topology(self._publish_channel)

    @property
    def is_connected(self) -> bool:
        conn = self._connection
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    # --- publishing -------------------------------------------------------------------------------

    async def publish(self, msg: BusMessage, headers: Mapping[str, Any] | None = None) -> None:
        """Publish now and wait for the broker's confirm (persistent, mandatory for work queues).

        Concurrent calls pipeline their confirms on the one channel, so `publish_many` or
        `asyncio.gather` of many publishes costs about one round trip, not one per message. Prefer
        `add_to_outbox` whenever the message must agree with a database write.
        """
        if not tracing_enabled():
            # No SDK: the span would be a non-recording copy of the current one, so injecting the
            # current context writes the same traceparent, without the span machinery per message.
            await self.publish_raw(
                msg.ROUTING_KEY, msg.to_bytes(), message_id=msg.message_id, headers=trace_headers(headers)
            )
            return
        with producer_span(msg.ROUTING_KEY):
            await self.publish_raw(
                msg.ROUTING_KEY, msg.to_bytes(), message_id=msg.message_id, headers=trace_headers(headers)
            )

    async def publish_many(self, msgs: Iterable[BusMessage]) -> None:
        await asyncio.gather(*(self.publish(m) for m in msgs))

    async def publish_raw(
        self, routing_key: str, body: bytes, *, message_id: uuid.UUID, headers: Mapping[str, Any]
    ) -> None:
        """Publish an already encoded message (the outbox relay's path; headers carry the trace)."""
        publish_channel, connection = self._publish_channel, self._connection
        if publish_channel is None or connection is None:
            raise RuntimeError("Broker.connect() first")
        properties = amqp_spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=_PERSISTENT,
            headers=dict(headers) if headers else None,  # an empty table is just bytes to encode
            message_id=str(message_id),
            message_type=routing_key,
            app_id=self.service,
        )
        # Straight to aiormq: `wait=False` enqueues the frame without holding the channel lock until
        # the socket drained (aio-pika's Exchange.publish does), so concurrent publishes share one
        # write and their confirms pipeline. The broker's confirm is still awaited: that is the
        # guarantee. Nobody may be listening for a broadcast; for work queues unroutable is a bug.
        # The timeout also bounds waiting for a reconnecting channel (the relay holds row locks).
        # Connected (the usual case), the underlay channel is at hand and aiormq's own timeout
        # (it opens one per publish anyway) bounds the enqueue and the confirm: one timer, not two.
        if connection.connected.is_set():
            channel = cast(aiormq.Channel, await publish_channel.get_underlay_channel())
            await channel.basic_publish(
                body,
                exchange=EXCHANGE,
                routing_key=routing_key,
                properties=properties,
                mandatory=routing_key not in BROADCAST_ROUTING_KEYS,
                timeout=self._publish_timeout_s,
                wait=False,
            )
            return
        async with asyncio.timeout(self._publish_timeout_s):
            channel = cast(aiormq.Channel, await publish_channel.get_underlay_channel())
            await channel.basic_publish(
                body,
                exchange=EXCHANGE,
                routing_key=routing_key,
                properties=properties,
                mandatory=routing_key not in BROADCAST_ROUTING_KEYS,
                wait=False,
            )

    def kick_outbox(self) -> None:
        """Ask the relay to publish now (after committing outbox rows outside a handler)."""
        if self.relay is not None:
            self.relay.kick()

    # --- consuming --------------------------------------------------------------------------------

    async def start(self, router: BusRouter | None = None) -> None:
        """Consume every queue of `router` and run the outbox relay (if there is a database)."""
        await self.connect()
        assert self._connection is not None
        if router is not None and router.routes:
            self._consume_channel = await self._connection.channel()
            await self._consume_channel.set_qos(prefetch_count=self._prefetch)
            exchange = await declare_exchanges(self._consume_channel)
            for route in router.routes.values():
                queue = await declare_queue(
                    self._consume_channel, exchange, QUEUES[route.queue], self.instance_id
                )
                tag = await queue.consume(self._consumer(route, queue.name))
                self._consumers.append((queue, tag))
        if self.relay is not None and self._relay_task is None:
            self._relay_task = asyncio.create_task(self.relay.run(self._relay_stop), name="outbox-relay")

    def _consumer(self, route: Route, queue_name: str) -> Any:
        quorum = QUEUES[route.queue].quorum
        inflight = self._inflight
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
            await self._settle(route.queue, message, "dead-lettered")
            return

        limit = MAX_DELIVERIES if quorum else CLASSIC_MAX_DELIVERIES
        if quorum:
            delivery_count = int(headers.get("x-delivery-count") or 0) + 1
        else:
            delivery_count = 2 if message.redelivered else 1
        ctx = HandlerContext(
            queue=route.queue,
            message_id=msg.message_id,
            redelivered=bool(message.redelivered),
            delivery_count=delivery_count,
            headers=headers,
        )
        with consumer_span(route.queue, queue_name, msg.message_id, headers):
            try:
                outcome = await self._handle(route, queue_name, msg, ctx)
            except Exception:
                log.exception(
                    "bus.handler_failed",
                    queue=route.queue,
                    message_id=str(msg.message_id),
                    delivery=delivery_count,
                    max_deliveries=limit,
                )
                if delivery_count >= limit:
                    # Quorum queue: this nack exceeds the delivery limit, RabbitMQ dead-letters it.
                    await self._settle(route.queue, message, "dead-lettered", quorum=quorum)
                    return
                # Back off before requeueing, so a DB blip does not burn all deliveries in milliseconds.
                delay = min(self._retry_delay_s * 2 ** (delivery_count - 1), self._max_retry_delay_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                await self._settle(route.queue, message, "requeued")
                return
        await self._settle(route.queue, message, outcome)
        if outcome == "staged" and self.relay is not None:
            self.relay.kick()

    async def _handle(self, route: Route, queue_name: str, msg: BusMessage, ctx: HandlerContext) -> Outcome:
        """Run the handler in its transaction (idempotency row + handler writes + outbox rows)."""
        if self._session_factory is None:
            out = as_messages(await route.fn(msg, ctx))
            if out:  # an empty gather still costs a future per message
                await asyncio.gather(*(self.publish(m) for m in out))
            return "processed"
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
            for m in out:
                await add_to_outbox(session, m)
        return "staged" if out else "processed"

    async def _settle(
        self, queue: str, message: AbstractIncomingMessage, outcome: Outcome, *, quorum: bool = False
    ) -> None:
        """Ack/nack/reject, tolerating a channel that died meanwhile (the broker then redelivers)."""
        try:
            if outcome in ("processed", "staged", "duplicate"):
                settle = message.ack()
            elif outcome == "requeued" or quorum:
                settle = message.nack(requeue=True)
            else:
                settle = message.reject(requeue=False)
            async with asyncio.timeout(self._publish_timeout_s):  # no extra task, unlike wait_for
                await settle
        except Exception as exc:
            log.warning(
                "bus.settle_failed", message_id=message.message_id, error=f"{type(exc).__name__}: {exc}"
            )
            outcome = "lost"
        for listener in self.settle_listeners:
            listener(queue, message.message_id, outcome)

    # --- shutdown ---------------------------------------------------------------------------------

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop consuming, let in-flight handlers finish for up to `grace_s`, then close.

        Handlers still running after the grace are cancelled (their transactions roll back) and
        their messages, never acked, are requeued by RabbitMQ when the channel closes.
        """
        self._stopping.set()
        for queue, tag in self._consumers:
            if self.is_connected:  # a robust channel would otherwise wait for a reconnect forever
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(queue.cancel(tag), self._publish_timeout_s)
        self._consumers.clear()
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._relay_task is not None:
            self._relay_stop.set()
            try:
                await asyncio.wait_for(self._relay_task, timeout=max(grace_s, 1.0))
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception:
                log.exception("bus.relay_failed")
            self._relay_task = None
            if self.relay is not None and self.is_connected:
                # Rows committed by the last handlers go out now rather than after the restart.
                try:
                    await asyncio.wait_for(self.relay.publish_pending(), self._publish_timeout_s)
                except Exception as exc:
                    log.warning("bus.final_relay_failed", error=f"{type(exc).__name__}: {exc}")
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = self._publish_channel = self._consume_channel = None
