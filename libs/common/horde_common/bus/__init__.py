"""The message bus: typed messages, the RabbitMQ topology, idempotent consumers and the outbox.

Import the pieces from their modules (`horde_common.bus.messages`, `.broker`, `.router`, `.outbox`,
`.topology`); the most used names are re-exported here.
"""

from horde_common.bus.broker import Broker
from horde_common.bus.messages import BusMessage, parse_message
from horde_common.bus.outbox import OutboxRelay, add_to_outbox
from horde_common.bus.router import BusRouter, HandlerContext
from horde_common.bus.topology import DEAD_LETTER_QUEUE, EXCHANGE, MAX_DELIVERIES, QUEUES, declare_topology

__all__ = [
    "DEAD_LETTER_QUEUE",
    "EXCHANGE",
    "MAX_DELIVERIES",
    "QUEUES",
    "Broker",
    "BusMessage",
    "BusRouter",
    "HandlerContext",
    "OutboxRelay",
    "add_to_outbox",
    "declare_topology",
    "parse_message",
]
