"""The RabbitMQ topology as data: one topic exchange, one dead-letter exchange/queue, the `QUEUES` table.

Work queues are durable *quorum* queues with a delivery limit: RabbitMQ (>= 3.10) counts deliveries
itself and dead-letters a message to `horde.dead` once the limit is exceeded, so bounded redelivery
of poison messages is the broker's job, not a counter we would have to keep consistent ourselves.
The `batch.released` broadcast is the exception: every job-runner replica needs its own copy, so each
instance declares a private (exclusive, auto-delete, classic) queue bound to it.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, ExchangeType

EXCHANGE = "horde"
DEAD_EXCHANGE = "horde.dead"
DEAD_LETTER_QUEUE = "horde.dead-letters"

# A message is delivered at most MAX_DELIVERIES times before RabbitMQ dead-letters it. Five is enough
# to ride out a consumer crash or a short DB/miner hiccup (the broker backs off between attempts,
# see `horde_common.bus.ack`), and few enough that a poison message leaves the queue within seconds, not hours.
# RabbitMQ's `x-delivery-limit` counts *returns*, so the limit argument is MAX_DELIVERIES - 1.
MAX_DELIVERIES = 5

# Classic (broadcast) queues have no delivery counter; the broker allows one redelivery there.
CLASSIC_MAX_DELIVERIES = 2


@dataclass(frozen=True)
class QueueSpec:
    """One consumer queue. `name` is `<service>.<routing key>`; broadcast queues get an instance suffix."""

    name: str
    service: str
    routing_keys: tuple[str, ...]
    broadcast: bool = False

    def declared_name(self, instance_id: str) -> str:
        return f"{self.name}.{instance_id}" if self.broadcast else self.name

    @property
    def quorum(self) -> bool:
        return not self.broadcast


def _queue(service: str, routing_key: str, *, broadcast: bool = False) -> QueueSpec:
    return QueueSpec(f"{service}.{routing_key}", service, (routing_key,), broadcast)


QUEUES: dict[str, QueueSpec] = {
    q.name: q
    for q in (
        _queue("job-runner", "batch.shard.requested"),
        _queue("job-runner", "organic.job.requested"),
        _queue("job-runner", "trusted.job.requested"),
        _queue("job-runner", "batch.released", broadcast=True),
        _queue("scheduler", "batch.shard.ready"),
        _queue("scheduler", "batch.shard.completed"),
        _queue("weights", "batch.completed"),
        _queue("weights", "chain.metagraph.synced"),
        _queue("facilitator-gateway", "organic.job.status"),
        _queue("cross-validator", "trusted.job.completed"),
    )
}

# Routing keys only bound by per-instance queues: publishing one while no replica runs is not an error.
BROADCAST_ROUTING_KEYS: frozenset[str] = frozenset(
    k for q in QUEUES.values() if q.broadcast for k in q.routing_keys
)


def default_instance_id() -> str:
    """Unique per process: host (the pod name under Kubernetes), pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def queue_arguments(spec: QueueSpec) -> dict[str, Any]:
    if spec.quorum:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": MAX_DELIVERIES - 1,
            "x-dead-letter-exchange": DEAD_EXCHANGE,
        }
    return {"x-queue-type": "classic", "x-dead-letter-exchange": DEAD_EXCHANGE}


async def declare_exchanges(channel: AbstractChannel) -> AbstractExchange:
    """Declare `horde`, `horde.dead` and the dead-letter queue (bound to every key); return `horde`."""
    exchange = await channel.declare_exchange(EXCHANGE, ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(DEAD_EXCHANGE, ExchangeType.TOPIC, durable=True)
    dlq = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    await dlq.bind(dead, "#")
    return exchange


async def declare_queue(
    channel: AbstractChannel, exchange: AbstractExchange, spec: QueueSpec, instance_id: str
) -> AbstractQueue:
    queue = await channel.declare_queue(
        spec.declared_name(instance_id),
        durable=spec.quorum,
        exclusive=spec.broadcast,
        auto_delete=spec.broadcast,
        arguments=queue_arguments(spec),
    )
    for key in spec.routing_keys:
        await queue.bind(exchange, key)
    return queue


async def declare_topology(
    channel: AbstractChannel, service: str | None = None, instance_id: str | None = None
) -> dict[str, AbstractQueue]:
    """Declare the exchanges and the queues of `service` (all durable queues if None).

    Returns the declared queues keyed by their logical name (`QUEUES` key). Broadcast queues are
    per-instance and exclusive to this connection, so they are only declared for a named `service`.
    Declaration is idempotent; a queue declared with other arguments fails with PRECONDITION_FAILED.
    """
    exchange = await declare_exchanges(channel)
    instance_id = instance_id or default_instance_id()
    declared: dict[str, AbstractQueue] = {}
    for spec in QUEUES.values():
        if service is None and spec.broadcast:
            continue
        if service is not None and spec.service != service:
            continue
        declared[spec.name] = await declare_queue(channel, exchange, spec, instance_id)
    return declared


__all__ = [
    "BROADCAST_ROUTING_KEYS",
    "CLASSIC_MAX_DELIVERIES",
    "DEAD_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "EXCHANGE",
    "MAX_DELIVERIES",
    "QUEUES",
    "QueueSpec",
    "declare_topology",
    "default_instance_id",
]
