"""Declarative message handlers: `@router.handler("<service>.<routing key>")` on a typed coroutine.

Why not FastStream: its RabbitBroker acks around the handler call and owns the DB-less retry policy,
while we need "idempotency row + handler writes + outbox rows in ONE database transaction, commit,
then ack" and quorum-queue delivery limits declared by us. That is ~200 lines on plain aio-pika
(`Broker`), so we keep FastStream's ergonomics (typed handlers, routers) without its runtime.
"""

from __future__ import annotations

import inspect
import typing
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.bus.messages import BusMessage
from horde_common.bus.topology import QUEUES

HandlerResult: TypeAlias = BusMessage | list[BusMessage] | None
Handler = Callable[[Any, "HandlerContext"], Awaitable[HandlerResult]]
H = TypeVar("H", bound=Handler)


@dataclass
class HandlerContext:
    """What a handler knows about its delivery besides the message itself."""

    queue: str
    message_id: uuid.UUID
    redelivered: bool
    delivery_count: int  # 1 on the first delivery; RabbitMQ dead-letters after MAX_DELIVERIES
    headers: Mapping[str, Any] = field(default_factory=dict)
    db_session: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        """The session of the handler's transaction (committed before the ack, with the outbox rows)."""
        if self.db_session is None:
            raise RuntimeError("this broker has no session_factory; the handler has no database session")
        return self.db_session


@dataclass(frozen=True)
class Route:
    queue: str
    model: type[BusMessage]
    fn: Handler


class BusRouter:
    """A set of routes, one handler per queue; `include()` merges routers of several modules."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}

    def handler(self, queue: str) -> Callable[[H], H]:
        spec = QUEUES.get(queue)
        if spec is None:
            raise ValueError(f"unknown queue {queue!r}; queues are declared in horde_common.bus.topology")

        def register(fn: H) -> H:
            model = _message_model(fn)
            if model.ROUTING_KEY not in spec.routing_keys:
                raise TypeError(f"{fn.__qualname__}: {model.__name__} is not routed to {queue!r}")
            if queue in self.routes:
                raise ValueError(f"queue {queue!r} already has a handler")
            self.routes[queue] = Route(queue, model, fn)
            return fn

        return register

    def include(self, other: BusRouter) -> None:
        for queue, route in other.routes.items():
            if queue in self.routes:
                raise ValueError(f"queue {queue!r} already has a handler")
            self.routes[queue] = route


def _message_model(fn: Callable[..., Any]) -> type[BusMessage]:
    """The `BusMessage` subclass annotated on the handler's first parameter."""
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{fn.__qualname__}: a bus handler must be `async def`")
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2:
        raise TypeError(f"{fn.__qualname__}: a bus handler takes (msg, ctx)")
    hint = typing.get_type_hints(fn).get(params[0])
    if not (isinstance(hint, type) and issubclass(hint, BusMessage)):
        raise TypeError(f"{fn.__qualname__}: annotate the first parameter with a BusMessage subclass")
    model: type[BusMessage] = hint
    if not model.ROUTING_KEY:
        raise TypeError(f"{fn.__qualname__}: {model.__name__} has no ROUTING_KEY")
    return model


def as_messages(result: HandlerResult) -> list[BusMessage]:
    if result is None:
        return []
    if isinstance(result, BusMessage):
        return [result]
    return list(result)
