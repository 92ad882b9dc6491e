"""The bus client of a service: confirmed persistent publishing and idempotent transactional consuming.

`Broker` is the façade a service holds: it owns the AMQP connection, the outbox relay task and the
shutdown order, and delegates the rest: publishing to `publisher.Publisher`, consuming and settling
to `consumer.Consumer` (whose ack/nack/reject policy is the pure `ack.decide`). The names tests and
services import from here (`Broker`, `Outcome`, `SettleListener`) stay importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus._transport import CoalescingRobustConnection
from horde_common.bus.ack import Outcome
from horde_common.bus.consumer import Consumer, SettleListener
from horde_common.bus.messages import BusMessage
from horde_common.bus.outbox import OutboxRelay
from horde_common.bus.publisher import Publisher
from horde_common.bus.router import BusRouter
from horde_common.bus.topology import declare_topology, default_instance_id

log = structlog.get_logger(__name__)


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
        self._connect_timeout_s = connect_timeout_s
        self._publish_timeout_s = publish_timeout_s

        self._connection: AbstractRobustConnection | None = None
        self._publisher = Publisher(service, publish_timeout_s=publish_timeout_s)
        self.relay: OutboxRelay | None = (
            OutboxRelay(self._publisher, session_factory) if session_factory is not None else None
        )
        self._relay_stop = asyncio.Event()
        self._relay_task: asyncio.Task[None] | None = None
        self._consumer = Consumer(
            instance_id=self.instance_id,
            publisher=self._publisher,
            relay=self.relay,
            session_factory=session_factory,
            prefetch=prefetch,
            settle_timeout_s=publish_timeout_s,
            retry_delay_s=retry_delay_s,
            max_retry_delay_s=max_retry_delay_s,
        )
        # Appended to by metrics and tests; the consumer calls them after every settlement.
        self.settle_listeners: list[SettleListener] = self._consumer.settle_listeners

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
        publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self._publisher.attach(connection, publish_channel)
        await declare_topology(publish_channel)

    @property
    def is_connected(self) -> bool:
        conn = self._connection
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    def debug_state(self) -> dict[str, Any]:
        """The consumer's state for the `/debug/bus` view: consumed queues and handlers in flight."""
        return {
            "consumer_queues": [q.name for q, _tag in self._consumer.consumers],
            "in_flight": len(self._consumer.inflight),
        }

    # --- publishing -------------------------------------------------------------------------------

    async def publish(self, msg: BusMessage, headers: Mapping[str, Any] | None = None) -> None:
        """Publish now and wait for the broker's confirm (see `Publisher.publish`).

        Prefer `add_to_outbox` whenever the message must agree with a database write.
        """
        await self._publisher.publish(msg, headers)

    async def publish_many(self, msgs: Iterable[BusMessage]) -> None:
        """Publish all of `msgs` concurrently (their confirms pipeline on the channel)."""
        await self._publisher.publish_many(msgs)

    async def publish_raw(
        self, routing_key: str, body: bytes, *, message_id: uuid.UUID, headers: Mapping[str, Any]
    ) -> None:
        """Publish an already encoded message (the outbox relay's path; headers carry the trace)."""
        await self._publisher.publish_raw(routing_key, body, message_id=message_id, headers=headers)

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
            await self._consumer.start(self._connection, router)
        if self.relay is not None and self._relay_task is None:
            self._relay_task = asyncio.create_task(self.relay.run(self._relay_stop), name="outbox-relay")

    # --- shutdown ---------------------------------------------------------------------------------

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop consuming, let in-flight handlers finish for up to `grace_s`, then close.

        Handlers still running after the grace are cancelled (their transactions roll back) and
        their messages, never acked, are requeued by RabbitMQ when the channel closes.
        """
        await self._consumer.stop(
            grace_s, lambda: self.is_connected, cancel_timeout_s=self._publish_timeout_s
        )
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
        self._connection = None
        self._publisher.detach()
        self._consumer.detach()


__all__ = ["Broker", "Outcome", "SettleListener"]
