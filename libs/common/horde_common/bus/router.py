"""Declarative message handlers: `@router.handler("<service>.<routing key>", publishes=...)`.

Why not FastStream: its RabbitBroker acks around the handler call and owns the DB-less retry policy,
while we need "idempotency row + handler writes + outbox rows in ONE database transaction, commit,
then ack" and quorum-queue delivery limits declared by us. That is ~200 lines on plain aio-pika
(`Broker`), so we keep FastStream's ergonomics (typed handlers, routers, typed dependencies) without
its runtime.

A handler declares what it may return (`publishes=`): checked against its return annotation when it
is registered and against what it returns at run time, so the bus table in `docs/architecture.md`
(generated from these declarations) cannot drift from the code. Its per-service-instance objects
(`Dependencies`) reach it through `HandlerContext.dependency(T)`, bound by `BusRouter.bind`: a router
is module-level and shared by every instance in a process, the objects are not.

A handler that runs for minutes (a synthetic shard) is registered `long_running=True`: the consumer
then holds no transaction while it runs (`HandlerContext.db_session` is None). It opens short
transactions of its own from `HandlerContext.sessions`, and hands the writes that must commit with
its idempotency row and returned messages to `HandlerContext.defer_write` (see
`horde_common.bus.consumer`).
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.messages import BusMessage
from horde_common.bus.topology import QUEUES

HandlerResult: TypeAlias = BusMessage | Sequence[BusMessage] | None
Handler = Callable[[Any, "HandlerContext"], Awaitable[HandlerResult]]
# A write staged by a handler, run in the transaction that records its delivery (see `defer_write`).
DeferredWrite = Callable[[AsyncSession], Awaitable[None]]
H = TypeVar("H", bound=Handler)
T = TypeVar("T")

# Return annotations whose arguments are the messages a handler returns (`list[X]`, `X | None`, ...).
_CONTAINERS: tuple[Any, ...] = (
    list,
    tuple,
    collections.abc.Sequence,
    collections.abc.Iterable,
    typing.Union,
    types.UnionType,
)


class UndeclaredMessageError(TypeError):
    """A handler returned a message type it does not declare in `publishes=`."""


class Dependencies:
    """The per-service-instance objects, one per type: what `Depends` gives a FastStream handler.

    Built by the service runner from `ServiceSpec.dependencies` at start and emptied at stop; two
    instances of a service in one process have two of these, so they share no state.
    """

    def __init__(self, *values: object) -> None:
        self._by_type: dict[type, object] = {}
        for value in values:
            self.add(type(value), value)

    def add(self, kind: type[T], value: T) -> None:
        if kind in self._by_type:
            raise ValueError(f"a {kind.__name__} is already registered")
        if not isinstance(value, kind):
            raise TypeError(f"{value!r} is not a {kind.__name__}")
        self._by_type[kind] = value

    def get(self, kind: type[T]) -> T:
        """The instance of `kind`; `LookupError` (naming what is there) when the service has none."""
        value = self._by_type.get(kind)
        if value is None:
            have = ", ".join(sorted(t.__name__ for t in self._by_type)) or "none"
            raise LookupError(f"no {kind.__name__} among this service's dependencies (has: {have})")
        return cast(T, value)

    def find(self, kind: type[T]) -> T | None:
        """The instance of `kind`, or None (a debug view of a service still starting)."""
        return cast(T | None, self._by_type.get(kind))

    def clear(self) -> None:
        self._by_type.clear()

    def __contains__(self, kind: object) -> bool:
        return kind in self._by_type

    def __len__(self) -> int:
        return len(self._by_type)


@dataclass
class HandlerContext:
    """What a handler knows about its delivery besides the message itself."""

    queue: str
    message_id: uuid.UUID
    redelivered: bool
    delivery_count: int  # 1 on the first delivery; RabbitMQ dead-letters after MAX_DELIVERIES
    headers: Mapping[str, Any] = field(default_factory=dict)
    db_session: AsyncSession | None = None
    # The service instance's objects (set by a router bound with `BusRouter.bind`).
    dependencies: Dependencies = field(default_factory=Dependencies)
    # Long-running handlers only: the consumer's session factory, for short transactions of their own
    # (a long-running handler has no `db_session`: no connection is held while it runs).
    sessions: async_sessionmaker[AsyncSession] | None = None
    # Writes staged with `defer_write`, run by the consumer in the delivery's final transaction.
    deferred_writes: list[DeferredWrite] = field(default_factory=list)

    @property
    def session(self) -> AsyncSession:
        """The session of the handler's transaction (committed before the ack, with the outbox rows)."""
        if self.db_session is None:
            if self.sessions is not None:
                raise RuntimeError(
                    "a long_running handler holds no transaction: open short ones from ctx.sessions, "
                    "or stage writes that must commit with the delivery with ctx.defer_write"
                )
            raise RuntimeError("this broker has no session_factory; the handler has no database session")
        return self.db_session

    def defer_write(self, write: DeferredWrite) -> None:
        """Run `write(session)` in the transaction that records this delivery as processed.

        So a long-running handler's own writes (e.g. a failure event) commit atomically with its
        idempotency row and returned messages, exactly as a normal handler's writes to `ctx.session`
        do: a redelivery after a lost commit does not write them twice.
        """
        self.deferred_writes.append(write)

    async def run_deferred_writes(self, session: AsyncSession) -> None:
        """Run (once) the writes staged with `defer_write`, in `session`'s transaction."""
        writes, self.deferred_writes = self.deferred_writes, []
        for write in writes:
            await write(session)

    def dependency(self, kind: type[T]) -> T:
        """The service instance's `kind` object (e.g. `ctx.dependency(JobRunnerRuntime)`)."""
        return self.dependencies.get(kind)


@dataclass(frozen=True)
class Route:
    queue: str
    model: type[BusMessage]
    fn: Handler
    # The message types the handler may return (checked on every call by `fn`).
    publishes: tuple[type[BusMessage], ...] = ()
    # The handler as written (for names in logs and the bus table).
    handler: Callable[..., Any] | None = None
    # Run without a transaction held (see the module docstring and `horde_common.bus.consumer`).
    long_running: bool = False

    @property
    def handler_name(self) -> str:
        fn = self.handler if self.handler is not None else self.fn
        return getattr(fn, "__qualname__", repr(fn))


class BusRouter:
    """A set of routes, one handler per queue; `include()` merges routers of several modules."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}

    def handler(
        self, queue: str, *, publishes: Iterable[type[BusMessage]] = (), long_running: bool = False
    ) -> Callable[[H], H]:
        """Register the decorated `async def (msg: Model, ctx) -> ...` for `queue`.

        `publishes`: every message type the handler may return. It must agree with the return
        annotation (`-> None` declares nothing; `-> X`, `-> list[X]`, `-> X | None` declare X or
        subclasses of X); a returned message of another type fails the delivery with
        `UndeclaredMessageError`.

        `long_running`: the handler runs for minutes, so the consumer must not hold a database
        connection for it: no `ctx.db_session`; `ctx.sessions` for short transactions and
        `ctx.defer_write` for writes that commit with the delivery. Its returned messages should
        have deterministic message ids (a concurrent delivery of the same message on another
        replica may return them too; the outbox keeps one per id).
        """
        spec = QUEUES.get(queue)
        if spec is None:
            raise ValueError(f"unknown queue {queue!r}; queues are declared in horde_common.bus.topology")
        declared = tuple(dict.fromkeys(publishes))

        def register(fn: H) -> H:
            model = _message_model(fn)
            if model.ROUTING_KEY not in spec.routing_keys:
                raise TypeError(f"{fn.__qualname__}: {model.__name__} is not routed to {queue!r}")
            check_publishes(fn, declared)
            if queue in self.routes:
                raise ValueError(f"queue {queue!r} already has a handler")
            self.routes[queue] = Route(
                queue, model, _checked(fn, queue, declared), declared, fn, long_running
            )
            return fn

        return register

    def include(self, other: BusRouter) -> None:
        for queue, route in other.routes.items():
            if queue in self.routes:
                raise ValueError(f"queue {queue!r} already has a handler")
            self.routes[queue] = route

    def bind(self, dependencies: Dependencies) -> BusRouter:
        """A copy of this router whose handlers get `dependencies` on their `HandlerContext`.

        The runner binds the service's router to each instance's objects before consuming, so the
        module-level router never holds an instance's state.
        """
        bound = BusRouter()
        for queue, route in self.routes.items():
            bound.routes[queue] = replace(route, fn=_with_dependencies(route.fn, dependencies))
        return bound


def _with_dependencies(fn: Handler, dependencies: Dependencies) -> Handler:
    async def with_dependencies(msg: Any, ctx: HandlerContext) -> HandlerResult:
        ctx.dependencies = dependencies
        return await fn(msg, ctx)

    return with_dependencies


def _checked(fn: Handler, queue: str, declared: tuple[type[BusMessage], ...]) -> Handler:
    """`fn`, refusing at run time a returned message that it does not declare."""

    @functools.wraps(fn)
    async def checked(msg: Any, ctx: HandlerContext) -> HandlerResult:
        result = await fn(msg, ctx)
        for out in as_messages(result):
            if type(out) not in declared:
                names = ", ".join(d.__name__ for d in declared) or "nothing"
                raise UndeclaredMessageError(
                    f"{fn.__qualname__} (queue {queue!r}) returned {type(out).__name__} "
                    f"({out.ROUTING_KEY!r}) but declares publishes=({names}); add it to the declaration"
                )
        return result

    return checked


def check_publishes(fn: Callable[..., Any], declared: Sequence[type[BusMessage]]) -> None:
    """Raise `TypeError` unless `declared` agrees with `fn`'s return annotation.

    Returns None only -> declares nothing; returns messages -> declares at least one; each declared
    type is a message with a routing key that the annotation admits; each concrete message type in
    the annotation is declared (a `BusMessage` annotation admits any declared message).
    """
    name = getattr(fn, "__qualname__", repr(fn))
    for kind in declared:
        if not (isinstance(kind, type) and issubclass(kind, BusMessage) and kind.ROUTING_KEY):
            raise TypeError(f"{name}: publishes={kind!r} is not a BusMessage type with a ROUTING_KEY")
    hints = typing.get_type_hints(fn)
    if "return" not in hints:
        raise TypeError(f"{name}: annotate the return type (None, or the messages the handler returns)")
    annotated = _annotated_messages(hints["return"], name)
    if not annotated and declared:
        raise TypeError(f"{name}: annotated to return no message but declares publishes={_names(declared)}")
    if annotated and not declared:
        raise TypeError(
            f"{name}: returns {_names(annotated)}; declare them with @router.handler(..., publishes=(...))"
        )
    for kind in declared:
        if not any(issubclass(kind, allowed) for allowed in annotated):
            raise TypeError(
                f"{name}: declares {kind.__name__} but its return annotation admits {_names(annotated)}"
            )
    for allowed in annotated:
        if allowed is not BusMessage and not any(issubclass(kind, allowed) for kind in declared):
            raise TypeError(f"{name}: may return {allowed.__name__} (annotation) but does not declare it")


def _annotated_messages(hint: Any, name: str) -> tuple[type[BusMessage], ...]:
    """The message types a return annotation admits (empty for `None`)."""
    if hint is None or hint is type(None):
        return ()
    if isinstance(hint, type) and issubclass(hint, BusMessage):
        return (hint,)
    if typing.get_origin(hint) in _CONTAINERS:
        found: dict[type[BusMessage], None] = {}
        for arg in typing.get_args(hint):
            if arg is not Ellipsis:
                found.update(dict.fromkeys(_annotated_messages(arg, name)))
        return tuple(found)
    raise TypeError(f"{name}: return annotation {hint!r} is neither None nor bus messages")


def _names(kinds: Iterable[type]) -> str:
    return "(" + ", ".join(k.__name__ for k in kinds) + ")"


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
