"""Confirmed persistent publishing on the broker's confirm-mode channel (also the outbox relay's path).

Split from `broker`: the `Broker` opens the connection and the channel, attaches them here and
forwards `publish`/`publish_many`/`publish_raw`; the outbox relay publishes through `publish_raw`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection, DeliveryMode
from aiormq import spec as amqp_spec

from horde_common.bus.messages import BusMessage
from horde_common.bus.outbox import trace_headers
from horde_common.bus.topology import BROADCAST_ROUTING_KEYS, EXCHANGE
from horde_common.bus.tracing import producer_span, tracing_enabled

_PERSISTENT = int(DeliveryMode.PERSISTENT)


class Publisher:
    """Publishes on one confirm-mode channel; unusable until `attach()` gives it the channel."""

    def __init__(self, service: str, *, publish_timeout_s: float = 15.0) -> None:
        self.service = service
        self._publish_timeout_s = publish_timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None

    def attach(self, connection: AbstractRobustConnection, channel: AbstractChannel) -> None:
        """Publish on `channel` (opened with publisher confirms) of `connection` from now on."""
        self._connection, self._channel = connection, channel

    def detach(self) -> None:
        """Forget the channel (the broker closed the connection): publishing fails until re-attached."""
        self._connection = self._channel = None

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
        """Publish all of `msgs` concurrently (their confirms pipeline on the channel)."""
        await asyncio.gather(*(self.publish(m) for m in msgs))

    async def publish_raw(
        self, routing_key: str, body: bytes, *, message_id: uuid.UUID, headers: Mapping[str, Any]
    ) -> None:
        """Publish an already encoded message (the outbox relay's path; headers carry the trace)."""
        publish_channel, connection = self._channel, self._connection
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


__all__ = ["Publisher"]
