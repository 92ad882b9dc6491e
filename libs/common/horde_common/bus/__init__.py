"""The message bus: typed messages, the RabbitMQ topology, idempotent consumers and the outbox.

Import the pieces from their modules (`horde_common.bus.messages`, `.broker`, `.router`, `.outbox`,
`.topology`); the most used names are re-exported here, lazily (PEP 562 `__getattr__`): importing
`horde_common.bus.messages` alone (pydantic models, e.g. `MinerEndpoint` for the debug command) must
not import aio-pika and SQLAlchemy through this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from horde_common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from horde_common.bus.broker import Broker
    from horde_common.bus.messages import BusMessage, parse_message
    from horde_common.bus.outbox import OutboxRelay, add_to_outbox
    from horde_common.bus.router import BusRouter, Dependencies, HandlerContext, UndeclaredMessageError
    from horde_common.bus.topology import (
        DEAD_LETTER_QUEUE,
        EXCHANGE,
        MAX_DELIVERIES,
        QUEUES,
        declare_topology,
    )

# Which submodule defines each re-exported name.
_EXPORTS: dict[str, str] = {
    "Broker": "broker",
    "BusMessage": "messages",
    "parse_message": "messages",
    "OutboxRelay": "outbox",
    "add_to_outbox": "outbox",
    "BusRouter": "router",
    "HandlerContext": "router",
    "Dependencies": "router",
    "UndeclaredMessageError": "router",
    "DEAD_LETTER_QUEUE": "topology",
    "EXCHANGE": "topology",
    "MAX_DELIVERIES": "topology",
    "QUEUES": "topology",
    "declare_topology": "topology",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "DEAD_LETTER_QUEUE",
    "EXCHANGE",
    "MAX_DELIVERIES",
    "QUEUES",
    "Broker",
    "BusMessage",
    "BusRouter",
    "Dependencies",
    "HandlerContext",
    "OutboxRelay",
    "UndeclaredMessageError",
    "add_to_outbox",
    "declare_topology",
    "parse_message",
]
